-- depends: 0003_sessions
-- Failed logins per email (known or not, so a lockout does not reveal which emails exist).

CREATE TABLE login_attempts (
    email        text PRIMARY KEY,  -- lower-cased
    failures     integer NOT NULL,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL
);
