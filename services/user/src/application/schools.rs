//! Schools: CreateSchool makes the caller its admin (and a tutor of it, if a tutor); GetSchool
//! and UpdateSchool go by the caller's stored grants, so a school is usable by its creator at
//! once, before their next access token carries the new grants.

use chrono::Utc;
use repit_event_store::RepositoryError;
use repit_event_store::aggregate::ExecuteOptions;
use repit_platform::auth::Caller;
use repit_proto::repit::user::v1 as pb;

use super::{AppError, UserApplication, id_for, school_stream, user_result, user_stream};
use crate::domain::school::{SchoolCommand, SchoolError};
use crate::domain::{UserCommand, UserError};

/// The school a stream holds, with its revision.
fn view(
    state: crate::domain::school::SchoolAggregate,
    revision: Option<u64>,
) -> Option<pb::School> {
    let mut school = state.school?;
    school.revision = revision.unwrap_or(0);
    Some(school)
}

const UNKNOWN: AppError = AppError::Missing("school not found");

impl UserApplication {
    /// The caller's stored grants in `school_id`: (teaches there, administers it).
    async fn membership(&self, caller: &Caller, school_id: &str) -> Result<(bool, bool), AppError> {
        if caller.is_platform_admin() {
            return Ok((false, true));
        }
        let me = self.load_user(&caller.user_id).await?;
        let roles = me.user.map(|u| u.roles).unwrap_or_default();
        let holds = |role: pb::Role| {
            roles
                .iter()
                .any(|g| g.role() == role && g.school_id == school_id)
        };
        Ok((holds(pb::Role::Tutor), holds(pb::Role::Admin)))
    }

    /// The school of `school_id`, if it exists.
    pub(super) async fn school(&self, school_id: &str) -> Result<Option<pb::School>, AppError> {
        if uuid::Uuid::parse_str(school_id).is_err() {
            return Ok(None);
        }
        let loaded = self.schools.load(&school_stream(school_id)?).await?;
        Ok(view(loaded.state, loaded.revision))
    }

    /// CreateSchool: tutors and platform admins.
    pub async fn create_school(
        &self,
        caller: &Caller,
        request_id: &str,
        name: String,
    ) -> Result<pb::School, AppError> {
        if !caller.is_tutor() && !caller.is_platform_admin() {
            return Err(AppError::denied(
                "only tutors and platform admins create schools",
            ));
        }
        let now = Utc::now();
        let school_id = id_for("school", request_id);
        let stream = school_stream(&school_id)?;
        let command = SchoolCommand::Create {
            school_id: school_id.clone(),
            name,
            actor: caller.user_id.clone(),
            now,
        };
        let school = match self.schools.execute(&stream, &command).await {
            Ok(executed) => view(executed.state, executed.revision),
            // A retry with the same request id answers the same school.
            Err(RepositoryError::Domain(SchoolError::AlreadyExists)) => {
                let loaded = self.schools.load(&stream).await?;
                view(loaded.state, loaded.revision)
            }
            Err(other) => return Err(other.into()),
        }
        .ok_or(UNKNOWN)?;
        let mut grants = vec![pb::Role::Admin];
        if caller.is_tutor() {
            grants.push(pb::Role::Tutor);
        }
        for role in grants {
            let grant = UserCommand::GrantRole {
                grant: pb::RoleGrant {
                    role: role as i32,
                    school_id: school_id.clone(),
                    ..Default::default()
                },
                invite_id: String::new(),
                actor: caller.user_id.clone(),
                now,
            };
            match self
                .users
                .execute(&user_stream(&caller.user_id)?, &grant)
                .await
            {
                Err(RepositoryError::Domain(UserError::RoleAlreadyHeld)) => {}
                other => {
                    user_result(other)?;
                }
            }
        }
        Ok(school)
    }

    /// GetSchool: its tutors and admins, and platform admins; NOT_FOUND for anyone else.
    pub async fn get_school(
        &self,
        caller: &Caller,
        school_id: &str,
    ) -> Result<pb::School, AppError> {
        let school = self.school(school_id).await?.ok_or(UNKNOWN)?;
        let (teaches, administers) = self.membership(caller, school_id).await?;
        if !teaches && !administers {
            return Err(UNKNOWN);
        }
        Ok(school)
    }

    /// UpdateSchool (rename): its admins and platform admins.
    pub async fn rename_school(
        &self,
        caller: &Caller,
        school_id: &str,
        name: String,
        expected_revision: Option<u64>,
    ) -> Result<pb::School, AppError> {
        self.school(school_id).await?.ok_or(UNKNOWN)?;
        let (teaches, administers) = self.membership(caller, school_id).await?;
        if !administers {
            return Err(if teaches {
                AppError::denied("only the school's admins rename it")
            } else {
                UNKNOWN
            });
        }
        let options = ExecuteOptions {
            expected_revision,
            ..ExecuteOptions::default()
        };
        let command = SchoolCommand::Rename {
            name,
            actor: caller.user_id.clone(),
            now: Utc::now(),
        };
        let executed = match self
            .schools
            .execute_with(&school_stream(school_id)?, &command, &options)
            .await
        {
            Ok(executed) => executed,
            Err(RepositoryError::Domain(SchoolError::NotFound)) => return Err(UNKNOWN),
            Err(other) => return Err(other.into()),
        };
        view(executed.state, executed.revision).ok_or(UNKNOWN)
    }
}
