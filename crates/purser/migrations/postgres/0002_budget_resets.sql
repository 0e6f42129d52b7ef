-- Budget reset job (service/resets.rs): partial indexes over the rows that have a budget period,
-- so both per-second sweeps ("due": budget_reset_at <= now, "uninitialised": budget_reset_at IS
-- NULL) touch only rows with a budget_duration, however many rows without one a table holds.
CREATE INDEX verification_tokens_due_reset_idx ON verification_tokens (budget_reset_at, token) WHERE budget_duration IS NOT NULL;
CREATE INDEX users_due_reset_idx ON users (budget_reset_at, user_id) WHERE budget_duration IS NOT NULL;
CREATE INDEX teams_due_reset_idx ON teams (budget_reset_at, team_id) WHERE budget_duration IS NOT NULL;
CREATE INDEX budgets_due_reset_idx ON budgets (budget_reset_at, budget_id) WHERE budget_duration IS NOT NULL;
