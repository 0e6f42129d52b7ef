-- A team's keys are always listed in (created_at, token) order (`/team/info`, `/key/list`, team
-- deletion). Indexing that order beside team_id lets the listing walk the index instead of
-- copying every row of a big team into a temporary sort.
DROP INDEX verification_tokens_team_idx;
CREATE INDEX verification_tokens_team_idx ON verification_tokens (team_id, created_at, token);
