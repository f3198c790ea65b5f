//! ListUsers, ListSessions and ListInvites, answered from the `user.directory` read model (never
//! by replaying streams per request). Who may list what is decided by the application; these
//! functions take the scope it settled on.

use chrono::{DateTime, Utc};
use prost::Message;
use repit_platform::paging;
use repit_projections::ReadModelDb;
use repit_proto::repit::user::v1 as pb;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::application::AppError;
use repit_projections::enum_column;

use crate::projections::{INVITES_TABLE, ROLES_TABLE, SESSIONS_TABLE, USERS_TABLE};

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        if repit_projections::is_unavailable(&error) {
            Self::Unavailable(error.to_string())
        } else {
            Self::Internal(error.to_string())
        }
    }
}

/// One page of a list and the token of the next (empty after the last).
pub type Page<T> = (Vec<T>, String);

/// A query's SQL and its parameters, numbered as they are pushed.
#[derive(Default)]
struct Sql {
    text: String,
    params: Vec<Param>,
}

enum Param {
    Text(String),
    Int(i64),
}

impl Sql {
    fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter and answers its placeholder.
    fn param(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("${}", self.params.len())
    }

    fn text(&mut self, value: impl Into<String>) -> String {
        self.param(Param::Text(value.into()))
    }

    fn int(&mut self, value: i64) -> String {
        self.param(Param::Int(value))
    }

    /// `(p1, p2, …)` over `values`, which must not be empty.
    fn list(&mut self, values: &[String]) -> String {
        let placeholders: Vec<String> = values.iter().map(|v| self.text(v.clone())).collect();
        format!("({})", placeholders.join(", "))
    }

    fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Ends the query with a keyset page: rows after `after` (the last row's `key` and `id`)
    /// in the order of (`key`, `id`), at most `page_size` of them plus one that tells whether
    /// another page follows. Answers the page size in force.
    fn page(
        &mut self,
        (key, id): (&str, &str),
        descending: bool,
        after: Option<(Param, String)>,
        page_size: i64,
    ) -> i64 {
        let (cmp, order) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        if let Some((last_key, last_id)) = after {
            let (last_key, last_id) = (self.param(last_key), self.text(last_id));
            self.push(&format!(
                " AND ({key} {cmp} {last_key} OR ({key} = {last_key} AND {id} {cmp} {last_id}))"
            ));
        }
        let limit = page_size.clamp(1, paging::MAX_PAGE_SIZE);
        self.push(&format!(
            " ORDER BY {key} {order}, {id} {order} LIMIT {}",
            limit + 1
        ));
        limit
    }

    async fn fetch(self, db: &ReadModelDb) -> Result<Vec<AnyRow>, AppError> {
        let mut query = sqlx::query(&self.text);
        for param in self.params {
            query = match param {
                Param::Text(s) => query.bind(s),
                Param::Int(i) => query.bind(i),
            };
        }
        Ok(query.fetch_all(db.pool()).await?)
    }
}

/// A page of rows fetched one beyond `limit`, so the next token is only set when more follow.
fn paged<T>(
    rows: &[AnyRow],
    limit: i64,
    item: impl Fn(&AnyRow) -> Result<T, AppError>,
    token: impl Fn(&AnyRow) -> Result<String, AppError>,
) -> Result<Page<T>, AppError> {
    let limit = usize::try_from(limit).unwrap_or(0);
    let page = &rows[..rows.len().min(limit)];
    let items = page.iter().map(item).collect::<Result<Vec<_>, _>>()?;
    let next = match page.last() {
        Some(last) if rows.len() > limit => token(last)?,
        _ => String::new(),
    };
    Ok((items, next))
}

fn resource<T: Message + Default>(row: &AnyRow, kind: &str) -> Result<T, AppError> {
    let bytes: Vec<u8> = row.try_get("resource")?;
    T::decode(bytes.as_slice())
        .map_err(|e| AppError::Internal(format!("stored {kind} does not decode: {e}")))
}

fn timestamp_us(us: i64) -> Option<prost_types::Timestamp> {
    DateTime::from_timestamp_micros(us).map(repit_platform::time::timestamp)
}

/// Whose accounts ListUsers lists: the union of these, each limited to the roles it covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserScope {
    /// Every account (a platform admin without a scope).
    pub everyone: bool,
    /// Students and parents of these tutors' tenancies.
    pub tenancies: Vec<String>,
    /// Tutors and admins of these schools.
    pub school_staff: Vec<String>,
    /// Students and parents of the tenancies of these schools' tutors.
    pub school_tenancies: Vec<String>,
}

/// ListUsers' filters besides the scope.
#[derive(Clone, Debug, Default)]
pub struct UserFilter {
    /// Only holders of this role (in the scope).
    pub role: Option<pb::Role>,
    /// Lowercased substring of display name, email or Telegram username.
    pub query: String,
    pub include_deactivated: bool,
    pub page_size: i64,
    /// Where the previous page ended: (display name, user id).
    pub after: Option<(String, String)>,
}

/// The roles of `covered` that `filter` keeps, as the `role` column stores them.
fn roles(covered: &[pb::Role], filter: Option<pb::Role>) -> Vec<String> {
    covered
        .iter()
        .filter(|role| filter.is_none_or(|f| f == **role))
        .map(|role| enum_column(role.as_str_name(), "ROLE_"))
        .collect()
}

/// `s` as a LIKE pattern matching it anywhere, its wildcards escaped.
fn contains_pattern(s: &str) -> String {
    let mut pattern = String::from("%");
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// ListUsers: accounts in `scope`, ordered by display name then user id.
pub async fn list_users(
    db: &ReadModelDb,
    scope: &UserScope,
    filter: &UserFilter,
) -> Result<Page<pb::User>, AppError> {
    let mut sql = Sql::new(&format!(
        "SELECT u.user_id, u.display_name, u.resource FROM {USERS_TABLE} u WHERE "
    ));
    let members = [pb::Role::Student, pb::Role::Parent];
    let staff = [pb::Role::Tutor, pb::Role::Admin];
    let mut any_of = Vec::new();
    if scope.everyone {
        any_of.push(match filter.role {
            None => "1 = 1".to_owned(),
            Some(role) => {
                let role = sql.text(enum_column(role.as_str_name(), "ROLE_"));
                format!(
                    "EXISTS (SELECT 1 FROM {ROLES_TABLE} r WHERE r.user_id = u.user_id AND r.role = {role})"
                )
            }
        });
    }
    for (ids, covered, column) in [
        (&scope.tenancies, &members[..], "tutor_id"),
        (&scope.school_staff, &staff[..], "school_id"),
    ] {
        let roles = roles(covered, filter.role);
        if ids.is_empty() || roles.is_empty() {
            continue;
        }
        let (ids, roles) = (sql.list(ids), sql.list(&roles));
        any_of.push(format!(
            "EXISTS (SELECT 1 FROM {ROLES_TABLE} r WHERE r.user_id = u.user_id
                AND r.{column} IN {ids} AND r.role IN {roles})"
        ));
    }
    let member_roles = roles(&members, filter.role);
    if !scope.school_tenancies.is_empty() && !member_roles.is_empty() {
        let (schools, roles) = (sql.list(&scope.school_tenancies), sql.list(&member_roles));
        any_of.push(format!(
            "EXISTS (SELECT 1 FROM {ROLES_TABLE} r WHERE r.user_id = u.user_id AND r.role IN {roles}
                AND r.tutor_id IN (SELECT t.user_id FROM {ROLES_TABLE} t
                    WHERE t.role = 'tutor' AND t.school_id IN {schools}))"
        ));
    }
    if any_of.is_empty() {
        return Ok((Vec::new(), String::new()));
    }
    sql.push(&format!("({})", any_of.join(" OR ")));
    if !filter.include_deactivated {
        sql.push(" AND u.status <> 'deactivated'");
    }
    if !filter.query.is_empty() {
        let pattern = sql.text(contains_pattern(&filter.query));
        sql.push(&format!(" AND u.search_text LIKE {pattern} ESCAPE '\\'"));
    }
    let after = filter
        .after
        .clone()
        .map(|(name, id)| (Param::Text(name), id));
    let limit = sql.page(
        ("u.display_name", "u.user_id"),
        false,
        after,
        filter.page_size,
    );
    let rows = sql.fetch(db).await?;
    paged(
        &rows,
        limit,
        |row| resource(row, "user"),
        |row| {
            Ok(paging::page_token(
                &row.try_get::<String, _>("display_name")?,
                &row.try_get::<String, _>("user_id")?,
            ))
        },
    )
}

/// The tutors who teach in any of `schools`.
pub async fn tutors_of_schools(
    db: &ReadModelDb,
    schools: &[String],
) -> Result<Vec<String>, AppError> {
    if schools.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(&format!(
        "SELECT DISTINCT user_id FROM {ROLES_TABLE} WHERE role = 'tutor' AND school_id IN "
    ));
    let list = sql.list(schools);
    sql.push(&list);
    sql.fetch(db)
        .await?
        .iter()
        .map(|row| Ok(row.try_get::<String, _>(0)?))
        .collect()
}

/// ListSessions: `user_id`'s sessions that can still refresh at `now`, newest first, the one
/// of `current_session_id` marked. The account's cut-offs apply as at refresh
/// (`UserAggregate::sessions_cut_off`).
pub async fn list_sessions(
    db: &ReadModelDb,
    user_id: &str,
    current_session_id: &str,
    now: DateTime<Utc>,
    page_size: i64,
    after: Option<(i64, String)>,
) -> Result<Page<pb::Session>, AppError> {
    let mut sql = Sql::new(&format!(
        "SELECT s.session_id, s.sign_in_method, s.client_name, s.started_at_us,
            s.last_refreshed_at_us, s.expires_at_us
         FROM {SESSIONS_TABLE} s JOIN {USERS_TABLE} u ON u.user_id = s.user_id
         WHERE "
    ));
    let user = sql.text(user_id);
    let now = sql.int(now.timestamp_micros());
    sql.push(&format!(
        "s.user_id = {user} AND s.ended_at_us IS NULL AND s.expires_at_us > {now}
         AND s.refresh_expires_at_us > {now} AND u.status = 'active'
         AND (u.sessions_dead_before_us IS NULL OR s.started_at_us >= u.sessions_dead_before_us
              OR s.session_id = u.kept_session_id)
         AND (s.sign_in_method <> 'telegram' OR u.telegram_sessions_dead_before_us IS NULL
              OR s.started_at_us >= u.telegram_sessions_dead_before_us)"
    ));
    let after = after.map(|(started, id)| (Param::Int(started), id));
    let limit = sql.page(("s.started_at_us", "s.session_id"), true, after, page_size);
    let rows = sql.fetch(db).await?;
    paged(
        &rows,
        limit,
        |row| {
            let session_id: String = row.try_get("session_id")?;
            let method: String = row.try_get("sign_in_method")?;
            Ok(pb::Session {
                current: session_id == current_session_id,
                session_id,
                sign_in_method: match method.as_str() {
                    "password" => pb::SignInMethod::Password,
                    "telegram" => pb::SignInMethod::Telegram,
                    _ => pb::SignInMethod::Unspecified,
                } as i32,
                client_name: row.try_get("client_name")?,
                started_at: timestamp_us(row.try_get("started_at_us")?),
                last_refreshed_at: timestamp_us(row.try_get("last_refreshed_at_us")?),
                expires_at: timestamp_us(row.try_get("expires_at_us")?),
            })
        },
        |row| {
            Ok(paging::int_page_token(
                row.try_get("started_at_us")?,
                &row.try_get::<String, _>("session_id")?,
            ))
        },
    )
}

/// Whose invites ListInvites lists: the union of these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InviteScope {
    /// Every invite (a platform admin without a filter).
    pub everything: bool,
    /// Invites into these tutors' tenancies.
    pub tenancies: Vec<String>,
    /// Invites into these schools.
    pub schools: Vec<String>,
    /// Invites this account created (its Telegram binding invites among them).
    pub created_by: Option<String>,
}

/// ListInvites: invites in `scope`, newest first; without `include_inactive` only those that
/// can still be redeemed at `now`. Each shows its status at `now` (EXPIRED past its expiry).
pub async fn list_invites(
    db: &ReadModelDb,
    scope: &InviteScope,
    include_inactive: bool,
    now: DateTime<Utc>,
    page_size: i64,
    after: Option<(i64, String)>,
) -> Result<Page<pb::Invite>, AppError> {
    let mut sql = Sql::new(&format!(
        "SELECT invite_id, created_at_us, resource FROM {INVITES_TABLE} WHERE "
    ));
    let mut any_of = Vec::new();
    if scope.everything {
        any_of.push("1 = 1".to_owned());
    }
    for (ids, column) in [
        (&scope.tenancies, "tutor_id"),
        (&scope.schools, "school_id"),
    ] {
        if !ids.is_empty() {
            let ids = sql.list(ids);
            any_of.push(format!("{column} IN {ids}"));
        }
    }
    if let Some(creator) = &scope.created_by {
        let creator = sql.text(creator.clone());
        any_of.push(format!("created_by_user_id = {creator}"));
    }
    if any_of.is_empty() {
        return Ok((Vec::new(), String::new()));
    }
    sql.push(&format!("({})", any_of.join(" OR ")));
    let now_us = now.timestamp_micros();
    if !include_inactive {
        let now = sql.int(now_us);
        sql.push(&format!(" AND status = 'active' AND expires_at_us > {now}"));
    }
    let after = after.map(|(created, id)| (Param::Int(created), id));
    let limit = sql.page(("created_at_us", "invite_id"), true, after, page_size);
    let rows = sql.fetch(db).await?;
    paged(
        &rows,
        limit,
        |row| {
            let mut invite: pb::Invite = resource(row, "invite")?;
            let expired = invite.status() == pb::InviteStatus::Active
                && invite.expires_at.as_ref().is_some_and(|at| {
                    repit_platform::time::from_timestamp(Some(at)).timestamp_micros() <= now_us
                });
            if expired {
                invite.status = pb::InviteStatus::Expired as i32;
            }
            Ok(invite)
        },
        |row| {
            Ok(paging::int_page_token(
                row.try_get("created_at_us")?,
                &row.try_get::<String, _>("invite_id")?,
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_matches_its_own_wildcards_literally() {
        assert_eq!(contains_pattern("ann"), "%ann%");
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }

    #[test]
    fn a_role_filter_narrows_the_roles_a_scope_covers() {
        let members = [pb::Role::Student, pb::Role::Parent];
        assert_eq!(roles(&members, None), ["student", "parent"]);
        assert_eq!(roles(&members, Some(pb::Role::Parent)), ["parent"]);
        assert!(roles(&members, Some(pb::Role::Tutor)).is_empty());
    }
}
