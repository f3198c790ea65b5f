//! The `lesson_school_tutors` read model: which tutors teach in which school, from the user
//! service's role grants. A school admin acts on the lessons of the school's tutors (lesson.proto,
//! "Who may do what"), and the access token names only the admin's schools, so the lesson service
//! keeps this mapping of its own rather than asking the user service on every call.

use async_trait::async_trait;
use prost::Message;
use repit_event_store::RecordedEvent;
use repit_projections::{ApplyError, Projection, ProjectionTx, TableDef, bigint};
use repit_proto::repit::user::v1 as user_pb;

/// (school, tutor) pairs (a view on the live generation).
pub const SCHOOL_TUTORS_TABLE: &str = "lesson_school_tutors";

const GRANTED: &str = "repit.user.v1.RoleGranted";
const REVOKED: &str = "repit.user.v1.RoleRevoked";

const TABLES: &[TableDef] = &[TableDef {
    name: SCHOOL_TUTORS_TABLE,
    ddl: &["CREATE TABLE {table} (
            school_id TEXT NOT NULL,
            tutor_id TEXT NOT NULL,
            active BIGINT NOT NULL,
            revision BIGINT NOT NULL,
            PRIMARY KEY (school_id, tutor_id)
        )"],
}];

/// Tutor grants in a school, as the user service's events tell them.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchoolTutorsProjection;

#[async_trait]
impl Projection for SchoolTutorsProjection {
    fn name(&self) -> &'static str {
        "lesson.school-tutors"
    }

    fn event_types(&self) -> Vec<String> {
        vec![GRANTED.to_owned(), REVOKED.to_owned()]
    }

    fn tables(&self) -> &'static [TableDef] {
        TABLES
    }

    async fn apply(&self, tx: &mut ProjectionTx, event: &RecordedEvent) -> Result<(), ApplyError> {
        // Only the user's own stream: a grant is recorded there (and nowhere else) once.
        if !event.stream.as_str().starts_with("user-") {
            return Ok(());
        }
        let (role, tutor_id, school_id, granted) = match event.event_type.as_str() {
            GRANTED => {
                let e = user_pb::RoleGranted::decode(event.data.as_ref())
                    .map_err(ApplyError::poison)?;
                (e.role(), e.user_id, e.school_id, true)
            }
            REVOKED => {
                let e = user_pb::RoleRevoked::decode(event.data.as_ref())
                    .map_err(ApplyError::poison)?;
                (e.role(), e.user_id, e.school_id, false)
            }
            _ => return Ok(()),
        };
        if role != user_pb::Role::Tutor || school_id.is_empty() {
            return Ok(());
        }
        let table = tx.table(SCHOOL_TUTORS_TABLE).to_owned();
        let revision = bigint(event.revision)?;
        // A revocation keeps the row (inactive) with its revision, so the latest grant or
        // revocation wins even when an older one is retried from the parking lot later.
        sqlx::query(&format!(
            "INSERT INTO {table} (school_id, tutor_id, active, revision) VALUES ($1, $2, $3, $4)
             ON CONFLICT (school_id, tutor_id) DO UPDATE SET
                active = excluded.active, revision = excluded.revision
             WHERE {table}.revision < excluded.revision"
        ))
        .bind(school_id)
        .bind(tutor_id)
        .bind(i64::from(granted))
        .bind(revision)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}
