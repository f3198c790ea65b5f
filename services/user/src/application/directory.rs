//! ListUsers, ListSessions and ListInvites: who may list which scope (user.proto), decided from
//! the caller's token and the school memberships in the read model; the rows come from the
//! `user.directory` read model through [`crate::queries`].
//!
//! Only tutors and admins list accounts and invites (students and parents are PERMISSION_DENIED).
//! A tutor's own scope is their tenancy; a school admin's is the school's tutors and admins and
//! the tenancies of its tutors; a platform admin's is everything. Naming a tenancy or school
//! outside that scope is PERMISSION_DENIED, whether it exists or not, so the answer reveals
//! nothing about it.

use chrono::Utc;
use repit_platform::auth::{Caller, Role};
use repit_proto::repit::user::v1 as pb;

use super::{AppError, UserApplication};
use crate::queries::{self, InviteScope, Page, UserFilter, UserScope};

/// ListUsers, parsed: the scope asked for and the filters.
#[derive(Clone, Debug, Default)]
pub struct UserListing {
    /// The tenancy to list; `None`: as the caller's role implies.
    pub tutor_id: Option<String>,
    /// The school whose staff (and, without `tutor_id`, tenancies) to list.
    pub school_id: Option<String>,
    pub filter: UserFilter,
}

/// ListInvites, parsed.
#[derive(Clone, Debug, Default)]
pub struct InviteListing {
    pub tutor_id: Option<String>,
    pub school_id: Option<String>,
    pub include_inactive: bool,
    pub page_size: i64,
    /// Where the previous page ended: (created at in µs, invite id).
    pub after: Option<(i64, String)>,
}

fn only_managers(caller: &Caller, what: &str) -> Result<(), AppError> {
    if caller.is_tutor() || caller.has_role(Role::Admin) {
        Ok(())
    } else {
        Err(AppError::denied(format!(
            "only tutors and admins list {what}"
        )))
    }
}

fn outside(what: &str) -> AppError {
    AppError::denied(format!("the {what} is outside the caller's administration"))
}

impl UserApplication {
    /// The tutors teaching in the schools `caller` administers.
    async fn tutors_of_administered_schools(
        &self,
        caller: &Caller,
    ) -> Result<Vec<String>, AppError> {
        let schools: Vec<String> = caller
            .administered_schools()
            .into_iter()
            .map(str::to_owned)
            .collect();
        queries::tutors_of_schools(&self.read_models, &schools).await
    }

    /// Ok when `caller` manages the tenancy of `tutor_id`: is that tutor, administers a school
    /// the tutor teaches in (as the read model knows), or is a platform admin.
    async fn check_lists_tenancy(&self, caller: &Caller, tutor_id: &str) -> Result<(), AppError> {
        if caller.is_platform_admin() || (caller.is_tutor() && caller.user_id == tutor_id) {
            return Ok(());
        }
        let tutors = self.tutors_of_administered_schools(caller).await?;
        if tutors.iter().any(|t| t == tutor_id) {
            Ok(())
        } else {
            Err(outside("tenancy"))
        }
    }

    /// ListUsers.
    pub async fn list_users(
        &self,
        caller: &Caller,
        listing: &UserListing,
    ) -> Result<Page<pb::User>, AppError> {
        only_managers(caller, "users")?;
        let mut scope = UserScope::default();
        match (&listing.tutor_id, &listing.school_id) {
            (tutor, Some(school)) => {
                if !caller.administers_school(school) {
                    return Err(outside("school"));
                }
                scope.school_staff.push(school.clone());
                match tutor {
                    Some(tutor) => {
                        let tutors = queries::tutors_of_schools(
                            &self.read_models,
                            std::slice::from_ref(school),
                        )
                        .await?;
                        if !tutors.contains(tutor) {
                            return Err(AppError::invalid(
                                "tutor_id",
                                "the tutor does not teach in school_id",
                            ));
                        }
                        scope.tenancies.push(tutor.clone());
                    }
                    None => scope.school_tenancies.push(school.clone()),
                }
            }
            (Some(tutor), None) => {
                self.check_lists_tenancy(caller, tutor).await?;
                scope.tenancies.push(tutor.clone());
            }
            (None, None) if caller.is_platform_admin() => scope.everyone = true,
            (None, None) => {
                if caller.is_tutor() {
                    scope.tenancies.push(caller.user_id.clone());
                }
                let schools: Vec<String> = caller
                    .administered_schools()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                scope.school_staff.clone_from(&schools);
                scope.school_tenancies = schools;
            }
        }
        // Every account listed is in a scope the caller manages, so contact fields are theirs
        // to see (the visibility rules of GetUser give the same answer for each).
        queries::list_users(&self.read_models, &scope, &listing.filter).await
    }

    /// ListSessions: the caller's own, the one of their token marked.
    pub async fn list_sessions(
        &self,
        caller: &Caller,
        page_size: i64,
        after: Option<(i64, String)>,
    ) -> Result<Page<pb::Session>, AppError> {
        queries::list_sessions(
            &self.read_models,
            &caller.user_id,
            &caller.session_id,
            Utc::now(),
            page_size,
            after,
        )
        .await
    }

    /// ListInvites: the invites the caller may manage (revoke), newest first.
    pub async fn list_invites(
        &self,
        caller: &Caller,
        listing: &InviteListing,
    ) -> Result<Page<pb::Invite>, AppError> {
        only_managers(caller, "invites")?;
        let mut scope = InviteScope::default();
        if let Some(tutor) = &listing.tutor_id {
            self.check_lists_tenancy(caller, tutor).await?;
            scope.tenancies.push(tutor.clone());
        }
        if let Some(school) = &listing.school_id {
            if !caller.administers_school(school) {
                return Err(outside("school"));
            }
            scope.schools.push(school.clone());
        }
        if listing.tutor_id.is_none() && listing.school_id.is_none() {
            if caller.is_platform_admin() {
                scope.everything = true;
            } else {
                if caller.is_tutor() {
                    scope.tenancies.push(caller.user_id.clone());
                }
                scope
                    .tenancies
                    .extend(self.tutors_of_administered_schools(caller).await?);
                scope.schools = caller
                    .administered_schools()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                scope.created_by = Some(caller.user_id.clone());
            }
        }
        queries::list_invites(
            &self.read_models,
            &scope,
            listing.include_inactive,
            Utc::now(),
            listing.page_size,
            listing.after.clone(),
        )
        .await
    }
}
