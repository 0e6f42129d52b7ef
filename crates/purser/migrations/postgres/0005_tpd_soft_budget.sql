-- Keys get the reference's `tpd_limit` (tokens per UTC day) and `soft_budget_cooldown` (set once
-- the key's soft-budget alert went out this budget period; a budget reset clears it). Teams keep
-- the same flag, internal to Purser: it is never shown, it only keeps the alert to once a period.
ALTER TABLE verification_tokens ADD COLUMN tpd_limit BIGINT;
ALTER TABLE verification_tokens ADD COLUMN soft_budget_cooldown BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE teams ADD COLUMN soft_budget_cooldown BOOLEAN NOT NULL DEFAULT FALSE;
