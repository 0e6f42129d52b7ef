-- Keys take the reference's `budget_limits` (extra budget windows, e.g. $10 a day beside $100 a
-- month), as teams already do. Window spend is not stored here: it is summed from spend_logs
-- when a window is first checked, and counted in memory after that.
ALTER TABLE verification_tokens ADD COLUMN budget_limits JSONB;
