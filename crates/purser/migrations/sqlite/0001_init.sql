-- Purser schema (SQLite). Mirrors LiteLLM's concepts and column names in snake_case tables.
-- Money columns are INTEGER nano-USD. Timestamps are bound from the application (RFC 3339 text).
-- JSON columns hold opaque documents or string lists; nothing is filtered by JSON content.

CREATE TABLE users (
    user_id               TEXT PRIMARY KEY NOT NULL,
    user_alias            TEXT,
    user_email            TEXT,
    user_role             TEXT NOT NULL DEFAULT 'internal_user',
    organization_id       TEXT,
    sso_user_id           TEXT,
    max_budget            INTEGER,
    spend                 INTEGER NOT NULL DEFAULT 0,
    models                TEXT NOT NULL DEFAULT '[]',
    metadata              TEXT NOT NULL DEFAULT '{}',
    max_parallel_requests INTEGER,
    tpm_limit             INTEGER,
    rpm_limit             INTEGER,
    budget_duration       TEXT,
    budget_reset_at       TEXT,
    model_max_budget      TEXT NOT NULL DEFAULT '{}',
    model_spend           TEXT NOT NULL DEFAULT '{}',
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL
);
CREATE INDEX users_email_idx ON users (lower(user_email));
CREATE INDEX users_reset_idx ON users (budget_reset_at);

CREATE TABLE model_table (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    aliases     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    updated_by  TEXT NOT NULL
);

CREATE TABLE budgets (
    budget_id             TEXT PRIMARY KEY NOT NULL,
    max_budget            INTEGER,
    soft_budget           INTEGER,
    max_parallel_requests INTEGER,
    tpm_limit             INTEGER,
    rpm_limit             INTEGER,
    tpd_limit             INTEGER,
    model_max_budget      TEXT,
    budget_duration       TEXT,
    budget_reset_at       TEXT,
    allowed_models        TEXT NOT NULL DEFAULT '[]',
    temp_budget_increase  INTEGER,
    temp_budget_expiry    TEXT,
    created_at            TEXT NOT NULL,
    created_by            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    updated_by            TEXT NOT NULL
);
CREATE INDEX budgets_reset_idx ON budgets (budget_reset_at);

CREATE TABLE teams (
    team_id                    TEXT PRIMARY KEY NOT NULL,
    team_alias                 TEXT,
    organization_id            TEXT,
    metadata                   TEXT NOT NULL DEFAULT '{}',
    max_budget                 INTEGER,
    soft_budget                INTEGER,
    spend                      INTEGER NOT NULL DEFAULT 0,
    models                     TEXT NOT NULL DEFAULT '[]',
    max_parallel_requests      INTEGER,
    tpm_limit                  INTEGER,
    rpm_limit                  INTEGER,
    tpd_limit                  INTEGER,
    budget_duration            TEXT,
    budget_reset_at            TEXT,
    blocked                    BOOLEAN NOT NULL DEFAULT 0,
    model_spend                TEXT NOT NULL DEFAULT '{}',
    model_max_budget           TEXT NOT NULL DEFAULT '{}',
    router_settings            TEXT NOT NULL DEFAULT '{}',
    team_member_permissions    TEXT NOT NULL DEFAULT '[]',
    access_group_ids           TEXT NOT NULL DEFAULT '[]',
    policies                   TEXT NOT NULL DEFAULT '[]',
    default_team_member_models TEXT NOT NULL DEFAULT '[]',
    budget_limits              TEXT,
    model_id                   INTEGER REFERENCES model_table (id) ON DELETE SET NULL,
    created_at                 TEXT NOT NULL,
    updated_at                 TEXT NOT NULL
);
CREATE INDEX teams_alias_idx ON teams (team_alias);
CREATE INDEX teams_created_idx ON teams (created_at);
CREATE INDEX teams_org_idx ON teams (organization_id);
CREATE INDEX teams_reset_idx ON teams (budget_reset_at);

-- The roster. members_with_roles and users.teams are derived from these rows, never stored.
CREATE TABLE team_memberships (
    team_id     TEXT NOT NULL REFERENCES teams (team_id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    role        TEXT NOT NULL,
    user_email  TEXT,
    spend       INTEGER NOT NULL DEFAULT 0,
    total_spend INTEGER NOT NULL DEFAULT 0,
    budget_id   TEXT REFERENCES budgets (budget_id) ON DELETE SET NULL,
    added_at    TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_memberships_user_idx ON team_memberships (user_id);
CREATE INDEX team_memberships_budget_idx ON team_memberships (budget_id);

CREATE TABLE verification_tokens (
    token                 TEXT PRIMARY KEY NOT NULL,
    key_name              TEXT,
    key_alias             TEXT,
    spend                 INTEGER NOT NULL DEFAULT 0,
    expires               TEXT,
    models                TEXT NOT NULL DEFAULT '[]',
    aliases               TEXT NOT NULL DEFAULT '{}',
    config                TEXT NOT NULL DEFAULT '{}',
    permissions           TEXT NOT NULL DEFAULT '{}',
    metadata              TEXT NOT NULL DEFAULT '{}',
    user_id               TEXT,
    team_id               TEXT,
    organization_id       TEXT,
    budget_id             TEXT,
    max_parallel_requests INTEGER,
    tpm_limit             INTEGER,
    rpm_limit             INTEGER,
    max_budget            INTEGER,
    soft_budget           INTEGER,
    budget_duration       TEXT,
    budget_reset_at       TEXT,
    blocked               BOOLEAN,
    allowed_routes        TEXT NOT NULL DEFAULT '[]',
    key_type              TEXT,
    model_max_budget      TEXT NOT NULL DEFAULT '{}',
    model_spend           TEXT NOT NULL DEFAULT '{}',
    rotation_count        INTEGER NOT NULL DEFAULT 0,
    last_rotation_at      TEXT,
    created_at            TEXT NOT NULL,
    created_by            TEXT,
    updated_at            TEXT NOT NULL,
    updated_by            TEXT
);
CREATE INDEX verification_tokens_user_team_idx ON verification_tokens (user_id, team_id);
CREATE INDEX verification_tokens_team_idx ON verification_tokens (team_id);
CREATE INDEX verification_tokens_reset_idx ON verification_tokens (budget_reset_at);
CREATE INDEX verification_tokens_alias_idx ON verification_tokens (key_alias);

CREATE TABLE audit_log (
    id                 TEXT PRIMARY KEY NOT NULL,
    updated_at         TEXT NOT NULL,
    changed_by         TEXT NOT NULL DEFAULT '',
    changed_by_api_key TEXT NOT NULL DEFAULT '',
    action             TEXT NOT NULL,
    table_name         TEXT NOT NULL,
    object_id          TEXT NOT NULL,
    before_value       TEXT,
    updated_values     TEXT
);
CREATE INDEX audit_log_time_idx ON audit_log (updated_at);
CREATE INDEX audit_log_object_idx ON audit_log (object_id);

CREATE TABLE spend_logs (
    request_id          TEXT PRIMARY KEY NOT NULL,
    call_type           TEXT NOT NULL,
    api_key             TEXT NOT NULL DEFAULT '',
    spend               INTEGER NOT NULL DEFAULT 0,
    total_tokens        INTEGER NOT NULL DEFAULT 0,
    prompt_tokens       INTEGER NOT NULL DEFAULT 0,
    completion_tokens   INTEGER NOT NULL DEFAULT 0,
    start_time          TEXT NOT NULL,
    end_time            TEXT NOT NULL,
    model               TEXT NOT NULL DEFAULT '',
    model_id            TEXT,
    model_group         TEXT,
    custom_llm_provider TEXT,
    api_base            TEXT,
    user_id             TEXT,
    team_id             TEXT,
    end_user            TEXT,
    status              TEXT NOT NULL DEFAULT 'success',
    metadata            TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX spend_logs_time_idx ON spend_logs (start_time);
CREATE INDEX spend_logs_key_idx ON spend_logs (api_key, start_time);
CREATE INDEX spend_logs_team_idx ON spend_logs (team_id, start_time);
CREATE INDEX spend_logs_user_idx ON spend_logs (user_id, start_time);
