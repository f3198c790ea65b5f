//! The `user.directory` read model: accounts, their role grants and parent links, sessions and
//! invites.
//!
//! Accounts and invites are folded with their aggregates' `evolve` from the stored resource, so a
//! row holds exactly what the command answered. Sessions are written straight from their four
//! events: the aggregate's state is mostly token hashes, which have no place here. A session's
//! cut-offs (log out everywhere, password change, deactivation, Telegram unbound) live on the
//! account's row and are applied when the sessions are read, as `UserAggregate::sessions_cut_off`
//! applies them at refresh: that holds whichever of the two streams' events the feed brings first.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use prost::Message;
use repit_event_store::{Aggregate, EventCodec, RecordedEvent};
use repit_platform::time::from_timestamp;
use repit_projections::{
    ApplyError, Projection, ProjectionTx, TableDef, bigint, enum_column, fold_order,
};
use repit_proto::repit::user::v1 as pb;
use sqlx::Row;

use crate::domain::invite::InviteCodec;
use crate::domain::session::{SessionCodec, SessionEvent};
use crate::domain::user::UserCodec;
use crate::domain::{InviteAggregate, UserAggregate};

/// One row per account (a view on the live generation).
pub const USERS_TABLE: &str = "users";
/// One row per role grant of an account.
pub const ROLES_TABLE: &str = "user_roles";
/// One row per parent link (student, parent).
pub const PARENT_LINKS_TABLE: &str = "parent_links";
/// One row per session (refresh-token family).
pub const SESSIONS_TABLE: &str = "user_sessions";
/// One row per invite.
pub const INVITES_TABLE: &str = "invites";

const TABLES: &[TableDef] = &[
    TableDef {
        name: USERS_TABLE,
        ddl: &[
            "CREATE TABLE {table} (
                user_id TEXT PRIMARY KEY,
                display_name TEXT NOT NULL,
                email TEXT NOT NULL,
                telegram_user_id BIGINT NOT NULL,
                telegram_username TEXT NOT NULL,
                time_zone TEXT NOT NULL,
                language TEXT NOT NULL,
                status TEXT NOT NULL,
                search_text TEXT NOT NULL,
                sessions_dead_before_us BIGINT,
                telegram_sessions_dead_before_us BIGINT,
                kept_session_id TEXT NOT NULL,
                revision BIGINT NOT NULL,
                created_at_us BIGINT NOT NULL,
                updated_at_us BIGINT NOT NULL,
                resource {blob} NOT NULL
            )",
            "CREATE INDEX {table}_name ON {table} (display_name, user_id)",
        ],
    },
    TableDef {
        name: ROLES_TABLE,
        ddl: &[
            "CREATE TABLE {table} (
                user_id TEXT NOT NULL,
                role TEXT NOT NULL,
                tutor_id TEXT NOT NULL,
                school_id TEXT NOT NULL,
                granted_at_us BIGINT NOT NULL,
                PRIMARY KEY (user_id, role, tutor_id, school_id)
            )",
            "CREATE INDEX {table}_tutor ON {table} (tutor_id, role)",
            "CREATE INDEX {table}_school ON {table} (school_id, role)",
        ],
    },
    TableDef {
        name: PARENT_LINKS_TABLE,
        ddl: &[
            "CREATE TABLE {table} (
                student_id TEXT NOT NULL,
                parent_id TEXT NOT NULL,
                PRIMARY KEY (student_id, parent_id)
            )",
            "CREATE INDEX {table}_parent ON {table} (parent_id)",
        ],
    },
    TableDef {
        name: SESSIONS_TABLE,
        ddl: &[
            "CREATE TABLE {table} (
                session_id TEXT PRIMARY KEY,
                user_id TEXT NOT NULL,
                sign_in_method TEXT NOT NULL,
                client_name TEXT NOT NULL,
                started_at_us BIGINT NOT NULL,
                last_refreshed_at_us BIGINT NOT NULL,
                refresh_expires_at_us BIGINT NOT NULL,
                expires_at_us BIGINT NOT NULL,
                ended_at_us BIGINT,
                end_reason TEXT,
                revision BIGINT NOT NULL
            )",
            "CREATE INDEX {table}_user_start ON {table} (user_id, started_at_us, session_id)",
        ],
    },
    TableDef {
        name: INVITES_TABLE,
        ddl: &[
            "CREATE TABLE {table} (
                invite_id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                role TEXT NOT NULL,
                tutor_id TEXT NOT NULL,
                school_id TEXT NOT NULL,
                target_user_id TEXT NOT NULL,
                student_id TEXT NOT NULL,
                created_by_user_id TEXT NOT NULL,
                max_uses BIGINT NOT NULL,
                use_count BIGINT NOT NULL,
                status TEXT NOT NULL,
                expires_at_us BIGINT NOT NULL,
                created_at_us BIGINT NOT NULL,
                updated_at_us BIGINT NOT NULL,
                revision BIGINT NOT NULL,
                resource {blob} NOT NULL
            )",
            "CREATE INDEX {table}_tutor ON {table} (tutor_id, created_at_us, invite_id)",
            "CREATE INDEX {table}_school ON {table} (school_id, created_at_us, invite_id)",
            "CREATE INDEX {table}_creator ON {table} (created_by_user_id, created_at_us, invite_id)",
        ],
    },
];

/// Accounts, grants, parent links, sessions and invites as the API lists them, and as analysts
/// query them.
#[derive(Clone, Copy, Debug, Default)]
pub struct DirectoryProjection;

/// What a ListUsers query matches: display name, email and Telegram username, lowercased in Rust
/// (SQLite's `lower` folds ASCII only, and names here are often Cyrillic).
fn search_text(user: &pb::User) -> String {
    format!(
        "{}\n{}\n{}",
        user.display_name, user.email, user.telegram_username
    )
    .to_lowercase()
}

fn micros(ts: Option<&prost_types::Timestamp>) -> i64 {
    from_timestamp(ts).timestamp_micros()
}

fn optional_micros(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(|at| at.timestamp_micros())
}

fn from_micros(us: Option<i64>) -> Option<DateTime<Utc>> {
    us.and_then(DateTime::from_timestamp_micros)
}

/// The id a stream is named by: `user-<id>` → `<id>`.
fn stream_id<'a>(event: &'a RecordedEvent, prefix: &str) -> &'a str {
    event
        .stream
        .as_str()
        .strip_prefix(prefix)
        .unwrap_or_default()
}

fn role_column(role: i32) -> String {
    enum_column(
        pb::Role::try_from(role).unwrap_or_default().as_str_name(),
        "ROLE_",
    )
}

impl DirectoryProjection {
    async fn apply_user(
        &self,
        tx: &mut ProjectionTx,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let decoded = UserCodec
            .decode(event)
            .map_err(|e| ApplyError::poison(format!("{e:#}")))?;
        let table = tx.table(USERS_TABLE).to_owned();
        let user_id = stream_id(event, "user-").to_owned();
        let row = sqlx::query(&format!(
            "SELECT revision, resource, sessions_dead_before_us, telegram_sessions_dead_before_us,
                kept_session_id
             FROM {table} WHERE user_id = $1"
        ))
        .bind(&user_id)
        .fetch_optional(tx.conn())
        .await?;
        let mut state = UserAggregate::default();
        if let Some(row) = row {
            if !fold_order(row.try_get(0)?, event.revision)? {
                return Ok(()); // Folded already.
            }
            let resource: Vec<u8> = row.try_get(1)?;
            state.user =
                Some(pb::User::decode(resource.as_slice()).map_err(|e| {
                    ApplyError::poison(format!("stored user does not decode: {e}"))
                })?);
            state.sessions_dead_before = from_micros(row.try_get(2)?);
            state.telegram_sessions_dead_before = from_micros(row.try_get(3)?);
            state.kept_session_id = row.try_get(4)?;
        }
        let before = state.user.clone().unwrap_or_default();
        state.evolve(&decoded);
        let Some(mut user) = state.user else {
            return Err(ApplyError::poison(format!(
                "{} for user {user_id} arrived before the user was registered",
                event.event_type
            )));
        };
        user.revision = event.revision;
        sqlx::query(&format!(
            "INSERT INTO {table} (user_id, display_name, email, telegram_user_id, telegram_username,
                time_zone, language, status, search_text, sessions_dead_before_us,
                telegram_sessions_dead_before_us, kept_session_id, revision, created_at_us,
                updated_at_us, resource)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (user_id) DO UPDATE SET
                display_name = excluded.display_name, email = excluded.email,
                telegram_user_id = excluded.telegram_user_id,
                telegram_username = excluded.telegram_username, time_zone = excluded.time_zone,
                language = excluded.language, status = excluded.status,
                search_text = excluded.search_text,
                sessions_dead_before_us = excluded.sessions_dead_before_us,
                telegram_sessions_dead_before_us = excluded.telegram_sessions_dead_before_us,
                kept_session_id = excluded.kept_session_id, revision = excluded.revision,
                updated_at_us = excluded.updated_at_us, resource = excluded.resource
             WHERE {table}.revision < excluded.revision"
        ))
        .bind(&user.user_id)
        .bind(&user.display_name)
        .bind(&user.email)
        .bind(user.telegram_user_id)
        .bind(&user.telegram_username)
        .bind(&user.time_zone)
        .bind(enum_column(user.language().as_str_name(), "LANGUAGE_"))
        .bind(enum_column(user.status().as_str_name(), "USER_STATUS_"))
        .bind(search_text(&user))
        .bind(optional_micros(state.sessions_dead_before))
        .bind(optional_micros(state.telegram_sessions_dead_before))
        .bind(&state.kept_session_id)
        .bind(bigint(event.revision)?)
        .bind(micros(user.created_at.as_ref()))
        .bind(event.created.timestamp_micros())
        .bind(user.encode_to_vec())
        .execute(tx.conn())
        .await?;
        if before.roles != user.roles {
            self.replace_roles(tx, &user).await?;
        }
        if before.parent_ids != user.parent_ids {
            self.replace_parents(tx, &user).await?;
        }
        Ok(())
    }

    async fn replace_roles(
        &self,
        tx: &mut ProjectionTx,
        user: &pb::User,
    ) -> Result<(), ApplyError> {
        let table = tx.table(ROLES_TABLE).to_owned();
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
            .bind(&user.user_id)
            .execute(tx.conn())
            .await?;
        for grant in &user.roles {
            sqlx::query(&format!(
                "INSERT INTO {table} (user_id, role, tutor_id, school_id, granted_at_us)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
            ))
            .bind(&user.user_id)
            .bind(role_column(grant.role))
            .bind(&grant.tutor_id)
            .bind(&grant.school_id)
            .bind(micros(grant.granted_at.as_ref()))
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    }

    /// A student's parents, from the student's own row (the link is on both accounts' streams;
    /// one side is enough).
    async fn replace_parents(
        &self,
        tx: &mut ProjectionTx,
        student: &pb::User,
    ) -> Result<(), ApplyError> {
        let table = tx.table(PARENT_LINKS_TABLE).to_owned();
        sqlx::query(&format!("DELETE FROM {table} WHERE student_id = $1"))
            .bind(&student.user_id)
            .execute(tx.conn())
            .await?;
        for parent_id in &student.parent_ids {
            sqlx::query(&format!(
                "INSERT INTO {table} (student_id, parent_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
            ))
            .bind(&student.user_id)
            .bind(parent_id)
            .execute(tx.conn())
            .await?;
        }
        Ok(())
    }

    async fn apply_session(
        &self,
        tx: &mut ProjectionTx,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let decoded = SessionCodec
            .decode(event)
            .map_err(|e| ApplyError::poison(format!("{e:#}")))?;
        let table = tx.table(SESSIONS_TABLE).to_owned();
        let session_id = stream_id(event, "session-").to_owned();
        let revision = bigint(event.revision)?;
        let stored: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT revision FROM {table} WHERE session_id = $1"
        ))
        .bind(&session_id)
        .fetch_optional(tx.conn())
        .await?;
        match (&decoded, stored) {
            // The family's first event: once only.
            (SessionEvent::Issued(_), Some(_)) => return Ok(()),
            (SessionEvent::Issued(_), None) => {}
            (_, None) => {
                return Err(ApplyError::poison(format!(
                    "{} for session {session_id} arrived before the session was issued",
                    event.event_type
                )));
            }
            (_, Some(stored)) => {
                if !fold_order(stored, event.revision)? {
                    return Ok(());
                }
            }
        }
        match &decoded {
            SessionEvent::Issued(e) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (session_id, user_id, sign_in_method, client_name,
                    started_at_us, last_refreshed_at_us, refresh_expires_at_us, expires_at_us,
                    revision)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)"
                ))
                .bind(session_id)
                .bind(e.user_id.clone())
                .bind(enum_column(
                    e.sign_in_method().as_str_name(),
                    "SIGN_IN_METHOD_",
                ))
                .bind(e.client_name.clone())
                .bind(micros(e.occurred_at.as_ref()))
                .bind(micros(e.refresh_token_expires_at.as_ref()))
                .bind(micros(e.session_expires_at.as_ref()))
                .bind(revision)
                .execute(tx.conn())
                .await?
            }
            SessionEvent::Rotated(e) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET last_refreshed_at_us = $2, refresh_expires_at_us = $3,
                    revision = $4
                 WHERE session_id = $1"
                ))
                .bind(session_id)
                .bind(micros(e.occurred_at.as_ref()))
                .bind(micros(e.refresh_token_expires_at.as_ref()))
                .bind(revision)
                .execute(tx.conn())
                .await?
            }
            // The revocation that follows in the same append ends the session.
            SessionEvent::ReuseDetected(_) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET revision = $2 WHERE session_id = $1"
                ))
                .bind(session_id)
                .bind(revision)
                .execute(tx.conn())
                .await?
            }
            SessionEvent::Revoked(e) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET ended_at_us = $2, end_reason = $3, revision = $4
                 WHERE session_id = $1"
                ))
                .bind(session_id)
                .bind(micros(e.occurred_at.as_ref()))
                .bind(enum_column(e.reason().as_str_name(), "SESSION_END_REASON_"))
                .bind(revision)
                .execute(tx.conn())
                .await?
            }
        };
        Ok(())
    }

    async fn apply_invite(
        &self,
        tx: &mut ProjectionTx,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let decoded = InviteCodec
            .decode(event)
            .map_err(|e| ApplyError::poison(format!("{e:#}")))?;
        let table = tx.table(INVITES_TABLE).to_owned();
        let invite_id = stream_id(event, "invite-").to_owned();
        let row = sqlx::query(&format!(
            "SELECT revision, resource FROM {table} WHERE invite_id = $1"
        ))
        .bind(&invite_id)
        .fetch_optional(tx.conn())
        .await?;
        let mut state = InviteAggregate::default();
        if let Some(row) = row {
            if !fold_order(row.try_get(0)?, event.revision)? {
                return Ok(());
            }
            let resource: Vec<u8> = row.try_get(1)?;
            state.invite =
                Some(pb::Invite::decode(resource.as_slice()).map_err(|e| {
                    ApplyError::poison(format!("stored invite does not decode: {e}"))
                })?);
        }
        state.evolve(&decoded);
        let Some(mut invite) = state.invite else {
            return Err(ApplyError::poison(format!(
                "{} for invite {invite_id} arrived before the invite was created",
                event.event_type
            )));
        };
        invite.revision = event.revision;
        sqlx::query(&format!(
            "INSERT INTO {table} (invite_id, kind, role, tutor_id, school_id, target_user_id,
                student_id, created_by_user_id, max_uses, use_count, status, expires_at_us,
                created_at_us, updated_at_us, revision, resource)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT (invite_id) DO UPDATE SET
                use_count = excluded.use_count, status = excluded.status,
                updated_at_us = excluded.updated_at_us, revision = excluded.revision,
                resource = excluded.resource
             WHERE {table}.revision < excluded.revision"
        ))
        .bind(&invite.invite_id)
        .bind(enum_column(invite.kind().as_str_name(), "INVITE_KIND_"))
        .bind(role_column(invite.role))
        .bind(&invite.tutor_id)
        .bind(&invite.school_id)
        .bind(&invite.target_user_id)
        .bind(&invite.student_id)
        .bind(&invite.created_by_user_id)
        .bind(i64::from(invite.max_uses))
        .bind(i64::from(invite.use_count))
        // ACTIVE, USED_UP or REVOKED: expiry is a matter of the clock, compared when read.
        .bind(enum_column(invite.status().as_str_name(), "INVITE_STATUS_"))
        .bind(micros(invite.expires_at.as_ref()))
        .bind(micros(invite.created_at.as_ref()))
        .bind(event.created.timestamp_micros())
        .bind(bigint(event.revision)?)
        .bind(invite.encode_to_vec())
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Projection for DirectoryProjection {
    fn name(&self) -> &'static str {
        "user.directory"
    }

    fn event_types(&self) -> Vec<String> {
        vec!["repit.user.v1.".to_owned()]
    }

    fn tables(&self) -> &'static [TableDef] {
        TABLES
    }

    async fn apply(&self, tx: &mut ProjectionTx, event: &RecordedEvent) -> Result<(), ApplyError> {
        let stream = event.stream.as_str();
        if stream.starts_with("user-") {
            self.apply_user(tx, event).await
        } else if stream.starts_with("session-") {
            self.apply_session(tx, event).await
        } else if stream.starts_with("invite-") && !stream.starts_with("invite-code-") {
            self.apply_invite(tx, event).await
        } else {
            // Login names, invite codes, schools and the signing-key ring: nothing to list.
            Ok(())
        }
    }
}
