-- User administration: sessions also end when a user is disabled (reason already allowed)
-- or changes their password.
ALTER TABLE refresh_token DROP CONSTRAINT refresh_token_revoke_reason_check;
ALTER TABLE refresh_token ADD CONSTRAINT refresh_token_revoke_reason_check
    CHECK (revoke_reason IN ('logout', 'logout_all', 'reuse', 'user_disabled', 'password_changed'));
