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
    /// The school whose staff (and, without `tutor_id`, tenancies) to list, besides the
    /// tenancy of `tutor_id`.
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
        queries::tutors_of_schools(&self.read_models, &caller.administered_schools()).await
    }

    /// Ok when `caller` manages the tenancy of `tutor_id` — the rule every command uses
    /// (`check_manages_tenancy`) — and PERMISSION_DENIED otherwise, as the lists' contract says
    /// (whether the tenancy exists or not).
    async fn check_lists_tenancy(&self, caller: &Caller, tutor_id: &str) -> Result<(), AppError> {
        match self.check_manages_tenancy(caller, tutor_id).await {
            Ok(()) => Ok(()),
            Err(AppError::NotFound | AppError::Missing(_) | AppError::PermissionDenied(_)) => {
                Err(outside("tenancy"))
            }
            Err(other) => Err(other),
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
        if let Some(school) = &listing.school_id {
            if !caller.administers_school(school) {
                return Err(outside("school"));
            }
            scope.school_staff.push(school.clone());
            if listing.tutor_id.is_none() {
                scope.school_tenancies.push(school.clone());
            }
        }
        if let Some(tutor) = &listing.tutor_id {
            self.check_lists_tenancy(caller, tutor).await?;
            scope.tenancies.push(tutor.clone());
        }
        if listing.tutor_id.is_none() && listing.school_id.is_none() {
            if caller.is_platform_admin() {
                scope.everyone = true;
            } else {
                if caller.is_tutor() {
                    scope.tenancies.push(caller.user_id.clone());
                }
                scope.school_staff = caller.administered_schools();
                scope.school_tenancies = caller.administered_schools();
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
        }
        if let Some(school) = &listing.school_id
            && !caller.administers_school(school)
        {
            return Err(outside("school"));
        }
        match (&listing.tutor_id, &listing.school_id) {
            // Each filter narrows: an invite is into a tenancy or into a school, never both.
            (Some(_), Some(_)) => return Ok((Vec::new(), String::new())),
            (Some(tutor), None) => scope.tenancies.push(tutor.clone()),
            (None, Some(school)) => scope.schools.push(school.clone()),
            (None, None) if caller.is_platform_admin() => scope.everything = true,
            (None, None) => {
                if caller.is_tutor() {
                    scope.tenancies.push(caller.user_id.clone());
                }
                scope
                    .tenancies
                    .extend(self.tutors_of_administered_schools(caller).await?);
                scope.schools = caller.administered_schools();
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
