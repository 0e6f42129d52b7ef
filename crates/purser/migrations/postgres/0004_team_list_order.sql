-- `/v2/team/list` orders by the sort column, then team_id (byte order, COLLATE "C"). Indexing both
-- lets a page (also a deep one: OFFSET 4,900 of 10,000 teams) walk the index instead of sorting
-- every row before it.
DROP INDEX teams_created_idx;
CREATE INDEX teams_created_idx ON teams (created_at, team_id COLLATE "C");
-- Alias order puts teams without an alias last: the index carries the same expression.
CREATE INDEX teams_alias_sort_idx ON teams ((team_alias IS NULL), team_alias COLLATE "C", team_id COLLATE "C");
CREATE INDEX teams_spend_idx ON teams (spend, team_id COLLATE "C");
