//! Accounts seen and changed by others and by themselves: visibility, CreateUser, GetUser,
//! roles, parent links, password, email, sessions, deactivation and key rotation.
//!
//! Visibility (user.proto): a user outside the caller's visibility is NOT_FOUND, never
//! PERMISSION_DENIED. The caller sees themselves; a tutor the accounts holding a student or
//! parent grant in their tenancy; a school admin the school's tutors and admins and their
//! tenancies; a platform admin everyone; a student or parent the tutors of their tenancies; a
//! parent their children. Contact fields (email, Telegram) are shown only to the user, the tutors
//! whose tenancy holds them, and admins of those tutors' schools.

use chrono::{DateTime, TimeDelta, Utc};
use repit_event_store::RepositoryError;
use repit_event_store::aggregate::ExecuteOptions;
use repit_platform::auth::Caller;
use repit_proto::repit::common::v1::Language;
use repit_proto::repit::user::v1 as pb;

use super::{
    AppError, UserApplication, email_stream, hash_password, id_for, session_stream, user_result,
    user_stream, verify_password,
};
use crate::domain::user::{MAX_PARENTS, ParentLink, Register};
use crate::domain::{LoginNameCommand, SessionCommand, UserAggregate, UserCommand, UserError};
use crate::keys::KeyError;

/// How much of an account a caller may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    /// Not at all: answer NOT_FOUND.
    Hidden,
    /// Name, roles and links, without email and Telegram.
    Public,
    /// Everything, contact fields included.
    Full,
}

/// A user as `visibility` allows (contact fields blanked for [`Visibility::Public`]).
fn shown(mut user: pb::User, visibility: Visibility) -> Option<pb::User> {
    match visibility {
        Visibility::Hidden => None,
        Visibility::Full => Some(user),
        Visibility::Public => {
            user.email.clear();
            user.telegram_user_id = 0;
            user.telegram_username.clear();
            Some(user)
        }
    }
}

/// How long after a Telegram login a password may be set without the current one (Telegram is
/// the recovery channel).
const TELEGRAM_RECOVERY_WINDOW: TimeDelta = TimeDelta::minutes(10);

fn tutors_of(user: &pb::User) -> impl Iterator<Item = &str> {
    user.roles.iter().filter_map(|g| {
        matches!(g.role(), pb::Role::Student | pb::Role::Parent).then_some(g.tutor_id.as_str())
    })
}

fn schools_of(user: &pb::User) -> impl Iterator<Item = &str> {
    user.roles.iter().filter_map(|g| {
        (matches!(g.role(), pb::Role::Tutor | pb::Role::Admin) && !g.school_id.is_empty())
            .then_some(g.school_id.as_str())
    })
}

impl UserApplication {
    /// Whether `caller` administers a school that the tutor `tutor_id` teaches in.
    async fn administers_tutor(&self, caller: &Caller, tutor_id: &str) -> bool {
        if caller.is_platform_admin() {
            return true;
        }
        if !caller.has_role(repit_platform::auth::Role::Admin) {
            return false;
        }
        let Ok(tutor) = self.load_user(tutor_id).await else {
            return false;
        };
        tutor.user.as_ref().is_some_and(|t| {
            t.roles.iter().any(|g| {
                g.role() == pb::Role::Tutor
                    && !g.school_id.is_empty()
                    && caller.administers_school(&g.school_id)
            })
        })
    }

    /// What `caller` may see of `user`.
    pub async fn visibility(&self, caller: &Caller, user: &pb::User) -> Visibility {
        if user.user_id == caller.user_id || caller.is_platform_admin() {
            return Visibility::Full;
        }
        for tutor in tutors_of(user) {
            if (caller.is_tutor() && tutor == caller.user_id)
                || self.administers_tutor(caller, tutor).await
            {
                return Visibility::Full;
            }
        }
        if schools_of(user).any(|school| caller.administers_school(school)) {
            return Visibility::Full;
        }
        let is_tutor = user.roles.iter().any(|g| g.role() == pb::Role::Tutor);
        if (is_tutor && caller.in_tenancy_of(&user.user_id))
            || caller.is_parent_of(&user.user_id)
            || user.child_ids.contains(&caller.user_id)
        {
            return Visibility::Public;
        }
        Visibility::Hidden
    }

    /// Ok when `caller` manages the tenancy of `tutor_id` (is that tutor, or an admin of a school
    /// the tutor teaches in, or a platform admin); otherwise PERMISSION_DENIED for callers who
    /// manage nothing, NOT_FOUND for a tenancy they cannot see.
    pub(super) async fn check_manages_tenancy(
        &self,
        caller: &Caller,
        tutor_id: &str,
    ) -> Result<(), AppError> {
        if caller.is_tutor() && tutor_id == caller.user_id {
            return Ok(());
        }
        let tutor = self.load_user(tutor_id).await?;
        // Any tutor grant: a tutor who joined through a school's invite holds only the school's.
        if !tutor.teaches() {
            return Err(AppError::NotFound);
        }
        if self.administers_tutor(caller, tutor_id).await {
            return Ok(());
        }
        if caller.is_tutor() || caller.has_role(repit_platform::auth::Role::Admin) {
            Err(AppError::NotFound)
        } else {
            Err(AppError::denied(
                "only tutors and their school's admins manage a tenancy",
            ))
        }
    }

    /// Ok, with the account's revision, when `caller` may change the profile of `user_id`, another
    /// account: it must be PENDING and in a tenancy the caller manages. NOT_FOUND when the caller
    /// cannot see it, PERMISSION_DENIED when they see it but may not change it.
    pub(super) async fn check_edits_pending_account(
        &self,
        caller: &Caller,
        user_id: &str,
    ) -> Result<u64, AppError> {
        let target = self.load_user(user_id).await?;
        let user = target.user.as_ref().ok_or(AppError::NotFound)?;
        if self.visibility(caller, user).await == Visibility::Hidden {
            return Err(AppError::NotFound);
        }
        let mut manages = false;
        for tutor in tutors_of(user) {
            if self.check_manages_tenancy(caller, tutor).await.is_ok() {
                manages = true;
                break;
            }
        }
        if !manages && !caller.is_platform_admin() {
            return Err(AppError::denied(
                "only the account itself, and its tutor while it is PENDING, change a profile",
            ));
        }
        if user.status() != pb::UserStatus::Pending {
            return Err(AppError::denied(
                "the account is no longer PENDING: only its owner changes its profile",
            ));
        }
        Ok(user.revision)
    }

    /// GetUser: NOT_FOUND unless visible; contact fields as the caller is entitled.
    pub async fn get_user(&self, caller: &Caller, user_id: &str) -> Result<pb::User, AppError> {
        let account = self.load_user(user_id).await?;
        let user = account.user.ok_or(AppError::NotFound)?;
        let visibility = self.visibility(caller, &user).await;
        shown(user, visibility).ok_or(AppError::NotFound)
    }

    /// BatchGetUsers: in the order asked; the first unknown or hidden id is named.
    pub async fn batch_get_users(
        &self,
        caller: &Caller,
        user_ids: &[String],
    ) -> Result<Vec<pb::User>, Result<String, AppError>> {
        let mut users = Vec::with_capacity(user_ids.len());
        for id in user_ids {
            match self.get_user(caller, id).await {
                Ok(user) => users.push(user),
                Err(AppError::NotFound) => return Err(Ok(id.clone())),
                Err(other) => return Err(Err(other)),
            }
        }
        Ok(users)
    }

    /// CreateUser: a PENDING student or parent in a tenancy the caller manages.
    #[allow(clippy::too_many_arguments)] // one per field of the request, parsed
    pub async fn create_user(
        &self,
        caller: &Caller,
        request_id: &str,
        role: pb::Role,
        tutor_id: &str,
        display_name: String,
        time_zone: String,
        language: Language,
        student_id: &str,
    ) -> Result<pb::User, AppError> {
        let now = Utc::now();
        let tutor_id = if tutor_id.is_empty() {
            if !caller.is_tutor() {
                return Err(AppError::denied(
                    "only tutors and their school's admins create accounts",
                ));
            }
            caller.user_id.clone()
        } else {
            tutor_id.to_owned()
        };
        self.check_manages_tenancy(caller, &tutor_id).await?;
        let tutor = self
            .load_user(&tutor_id)
            .await?
            .user
            .ok_or(AppError::NotFound)?;
        if !student_id.is_empty() {
            let student = self.load_user(student_id).await?;
            if !student.holds(pb::Role::Student, &tutor_id, "") {
                return Err(AppError::NotFound);
            }
            if student
                .user
                .as_ref()
                .is_some_and(|s| s.parent_ids.len() >= MAX_PARENTS)
            {
                return Err(AppError::rule(
                    "PARENT_LIMIT_REACHED",
                    "the student has two parents already",
                ));
            }
        }
        let user_id = id_for("create-user", request_id);
        let register = UserCommand::Register(Box::new(Register {
            user_id: user_id.clone(),
            method: pb::RegistrationMethod::CreatedByTutor,
            display_name,
            email: String::new(),
            password_hash: String::new(),
            telegram_user_id: 0,
            telegram_username: String::new(),
            time_zone: if time_zone.is_empty() {
                tutor.time_zone.clone()
            } else {
                time_zone
            },
            language: match language {
                Language::Unspecified => tutor.language(),
                other => other,
            },
            invite_id: String::new(),
            grants: vec![pb::RoleGrant {
                role: role as i32,
                tutor_id: tutor_id.clone(),
                ..Default::default()
            }],
            actor: caller.user_id.clone(),
            now,
        }));
        match self.users.execute(&user_stream(&user_id)?, &register).await {
            // A retry with the same request id answers the same account.
            Ok(_) | Err(RepositoryError::Domain(UserError::AlreadyExists)) => {}
            Err(other) => return Err(other.into()),
        }
        if !student_id.is_empty() {
            self.link(
                ParentLink {
                    student_id: student_id.to_owned(),
                    parent_id: user_id.clone(),
                    tutor_id,
                    invite_id: String::new(),
                    actor: caller.user_id.clone(),
                    now,
                },
                true,
            )
            .await?;
        }
        Ok(self.load_user(&user_id).await?.user.unwrap_or_default())
    }

    /// Links on the student's stream (the limit), then mirrors on the parent's. `idempotent`:
    /// an existing link is fine (a retried redemption). Answers the student.
    pub(super) async fn link(
        &self,
        link: ParentLink,
        idempotent: bool,
    ) -> Result<pb::User, AppError> {
        let student_stream = user_stream(&link.student_id)?;
        match self
            .users
            .execute(
                &student_stream,
                &UserCommand::LinkParent(Box::new(link.clone())),
            )
            .await
        {
            Err(RepositoryError::Domain(UserError::AlreadyLinked)) if idempotent => {}
            other => {
                user_result(other)?;
            }
        }
        user_result(
            self.users
                .execute(
                    &user_stream(&link.parent_id)?,
                    &UserCommand::RecordChild(Box::new(link.clone())),
                )
                .await,
        )?;
        Ok(self
            .load_user(&link.student_id)
            .await?
            .user
            .unwrap_or_default())
    }

    /// The tenancy in which `caller` may manage the student's parent links: the caller's own,
    /// or one of a school the caller administers.
    async fn managed_tenancy_of(
        &self,
        caller: &Caller,
        student: &pb::User,
    ) -> Result<String, AppError> {
        let tenancies: Vec<String> = student
            .roles
            .iter()
            .filter(|g| g.role() == pb::Role::Student)
            .map(|g| g.tutor_id.clone())
            .collect();
        for tutor in &tenancies {
            if (caller.is_tutor() && *tutor == caller.user_id)
                || self.administers_tutor(caller, tutor).await
            {
                return Ok(tutor.clone());
            }
        }
        Err(AppError::denied(
            "only the student's tutor and their school's admins manage parent links",
        ))
    }

    /// LinkParent / UnlinkParent.
    pub async fn set_parent_link(
        &self,
        caller: &Caller,
        student_id: &str,
        parent_id: &str,
        linked: bool,
        expected_revision: Option<u64>,
    ) -> Result<pb::User, AppError> {
        let now = Utc::now();
        let student = self
            .load_user(student_id)
            .await?
            .user
            .ok_or(AppError::NotFound)?;
        let parent = self.load_user(parent_id).await?;
        let parent_user = parent.user.clone().ok_or(AppError::NotFound)?;
        if self.visibility(caller, &student).await == Visibility::Hidden
            || self.visibility(caller, &parent_user).await == Visibility::Hidden
        {
            return Err(AppError::NotFound);
        }
        let tutor_id = self.managed_tenancy_of(caller, &student).await?;
        if expected_revision.is_some_and(|r| r != student.revision) {
            return Err(AppError::Aborted(
                "the student changed since expected_revision".to_owned(),
            ));
        }
        let link = ParentLink {
            student_id: student_id.to_owned(),
            parent_id: parent_id.to_owned(),
            tutor_id: tutor_id.clone(),
            invite_id: String::new(),
            actor: caller.user_id.clone(),
            now,
        };
        if linked {
            if student_id == parent_id {
                return Err(AppError::rule(
                    "CANNOT_BE_OWN_PARENT",
                    "a user cannot be their own parent",
                ));
            }
            if !parent.holds(pb::Role::Parent, &tutor_id, "") {
                return Err(AppError::rule(
                    "NOT_A_PARENT",
                    "the parent holds no parent grant in this tenancy",
                ));
            }
            return self.link(link, false).await;
        }
        user_result(
            self.users
                .execute(
                    &user_stream(student_id)?,
                    &UserCommand::UnlinkParent(Box::new(link.clone())),
                )
                .await,
        )?;
        user_result(
            self.users
                .execute(
                    &user_stream(parent_id)?,
                    &UserCommand::ForgetChild(Box::new(link)),
                )
                .await,
        )?;
        Ok(self.load_user(student_id).await?.user.unwrap_or_default())
    }

    /// Whether `caller` may grant or revoke `grant`.
    async fn may_manage_grant(&self, caller: &Caller, grant: &pb::RoleGrant) -> bool {
        match grant.role() {
            pb::Role::Student | pb::Role::Parent => {
                (caller.is_tutor() && grant.tutor_id == caller.user_id)
                    || self.administers_tutor(caller, &grant.tutor_id).await
            }
            pb::Role::Tutor | pb::Role::Admin => {
                if grant.school_id.is_empty() {
                    caller.is_platform_admin()
                } else {
                    caller.administers_school(&grant.school_id)
                }
            }
            pb::Role::Unspecified => false,
        }
    }

    /// GrantRole / RevokeRole.
    pub async fn set_role(
        &self,
        caller: &Caller,
        user_id: &str,
        grant: pb::RoleGrant,
        granted: bool,
        expected_revision: Option<u64>,
    ) -> Result<pb::User, AppError> {
        let now = Utc::now();
        let target = self
            .load_user(user_id)
            .await?
            .user
            .ok_or(AppError::NotFound)?;
        if self.visibility(caller, &target).await == Visibility::Hidden {
            return Err(AppError::NotFound);
        }
        if !self.may_manage_grant(caller, &grant).await {
            return Err(AppError::denied("the caller may not manage this grant"));
        }
        if !granted
            && grant.role() == pb::Role::Admin
            && grant.school_id.is_empty()
            && user_id == caller.user_id
        {
            // The only platform admin this service can be sure exists is the caller.
            return Err(AppError::rule(
                "LAST_PLATFORM_ADMIN",
                "a platform admin cannot revoke their own platform admin grant",
            ));
        }
        let command = if granted {
            UserCommand::GrantRole {
                grant,
                invite_id: String::new(),
                actor: caller.user_id.clone(),
                now,
            }
        } else {
            UserCommand::RevokeRole {
                grant,
                actor: caller.user_id.clone(),
                now,
            }
        };
        let options = ExecuteOptions {
            expected_revision,
            ..ExecuteOptions::default()
        };
        let executed = user_result(
            self.users
                .execute_with(&user_stream(user_id)?, &command, &options)
                .await,
        )?;
        let mut user = executed.state.user.ok_or(AppError::NotFound)?;
        user.revision = executed.revision.unwrap_or(0);
        Ok(user)
    }

    /// Whether the caller may act without the current password: no password yet, or a session
    /// started through the bot within the recovery window.
    async fn may_skip_password(
        &self,
        caller: &Caller,
        account: &UserAggregate,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        if account.password_hash.is_empty() {
            return Ok(true);
        }
        let session = self
            .sessions
            .load(&session_stream(&caller.session_id)?)
            .await?
            .state;
        Ok(session.sign_in_method == pb::SignInMethod::Telegram as i32
            && session
                .started_at
                .is_some_and(|at| now - at < TELEGRAM_RECOVERY_WINDOW))
    }

    async fn check_current_password(
        &self,
        caller: &Caller,
        account: &UserAggregate,
        current: String,
        now: DateTime<Utc>,
    ) -> Result<bool, AppError> {
        if current.is_empty() && self.may_skip_password(caller, account, now).await? {
            return Ok(true);
        }
        if account.password_hash.is_empty()
            || !verify_password(current, account.password_hash.clone()).await
        {
            return Err(AppError::denied("the current password is wrong"));
        }
        Ok(false)
    }

    /// ChangePassword: every other session of the caller ends.
    pub async fn change_password(
        &self,
        caller: &Caller,
        current: String,
        new_password: String,
    ) -> Result<u64, AppError> {
        let now = Utc::now();
        let account = self.load_user(&caller.user_id).await?;
        if account.user.as_ref().is_none_or(|u| u.email.is_empty()) {
            return Err(AppError::rule(
                "NO_EMAIL",
                "a password needs an email to log in with; set one first",
            ));
        }
        let without_current = self
            .check_current_password(caller, &account, current, now)
            .await?;
        let command = UserCommand::ChangePassword {
            password_hash: hash_password(new_password).await?,
            kept_session_id: caller.session_id.clone(),
            without_current_password: without_current,
            actor: caller.user_id.clone(),
            now,
        };
        let executed = user_result(
            self.users
                .execute(&user_stream(&caller.user_id)?, &command)
                .await,
        )?;
        Ok(executed.revision.unwrap_or(0))
    }

    /// ChangeEmail: claims the new login name, then releases the old one.
    pub async fn change_email(
        &self,
        caller: &Caller,
        new_email: &str,
        current: String,
    ) -> Result<pb::User, AppError> {
        let now = Utc::now();
        let email = super::normalise_email(new_email);
        let account = self.load_user(&caller.user_id).await?;
        self.check_current_password(caller, &account, current, now)
            .await?;
        let previous = account.user.as_ref().map(|u| u.email.clone());
        self.claim_email(&email, &caller.user_id, now).await?;
        let command = UserCommand::ChangeEmail {
            email: email.clone(),
            actor: caller.user_id.clone(),
            now,
        };
        let executed = user_result(
            self.users
                .execute(&user_stream(&caller.user_id)?, &command)
                .await,
        )?;
        if let Some(previous) = previous.filter(|p| !p.is_empty() && *p != email) {
            let release = LoginNameCommand::ReleaseEmail {
                email: previous.clone(),
                user_id: caller.user_id.clone(),
                now,
            };
            if let Err(error) = self
                .names
                .execute(&email_stream(&previous)?, &release)
                .await
            {
                // The account no longer uses it; a stuck claim only blocks reuse of the address.
                tracing::warn!(%error, "failed to release a previous login email");
            }
        }
        let mut user = executed.state.user.ok_or(AppError::NotFound)?;
        user.revision = executed.revision.unwrap_or(0);
        Ok(user)
    }

    /// RevokeSession: NOT_FOUND unless it is the caller's; an ended one answers OK.
    pub async fn revoke_session(&self, caller: &Caller, session_id: &str) -> Result<u64, AppError> {
        const UNKNOWN: AppError = AppError::Missing("session not found");
        if uuid::Uuid::parse_str(session_id).is_err() {
            return Err(UNKNOWN);
        }
        let stream = session_stream(session_id)?;
        let session = self.sessions.load(&stream).await?.state;
        if session.session_id.is_empty() || session.user_id != caller.user_id {
            return Err(UNKNOWN);
        }
        let command = SessionCommand::End {
            reason: pb::SessionEndReason::Revoked,
            actor: caller.user_id.clone(),
            now: Utc::now(),
        };
        match self.sessions.execute(&stream, &command).await {
            Ok(executed) => Ok(executed.revision.unwrap_or(0)),
            Err(RepositoryError::Domain(_)) => Err(UNKNOWN),
            Err(other) => Err(other.into()),
        }
    }

    /// DeactivateUser (oneself, or anyone for a platform admin) and ReactivateUser (platform
    /// admin).
    pub async fn set_active(
        &self,
        caller: &Caller,
        user_id: &str,
        active: bool,
        reason: String,
        expected_revision: Option<u64>,
    ) -> Result<pb::User, AppError> {
        let now = Utc::now();
        let target = self
            .load_user(user_id)
            .await?
            .user
            .ok_or(AppError::NotFound)?;
        if self.visibility(caller, &target).await == Visibility::Hidden {
            return Err(AppError::NotFound);
        }
        let allowed = caller.is_platform_admin() || (!active && user_id == caller.user_id);
        if !allowed {
            return Err(AppError::denied(if active {
                "only a platform admin reactivates accounts"
            } else {
                "only the user or a platform admin deactivates an account"
            }));
        }
        if !active
            && target
                .roles
                .iter()
                .any(|g| g.role() == pb::Role::Admin && g.school_id.is_empty())
            && user_id == caller.user_id
        {
            return Err(AppError::rule(
                "LAST_PLATFORM_ADMIN",
                "a platform admin cannot deactivate themselves",
            ));
        }
        let command = if active {
            UserCommand::Reactivate {
                actor: caller.user_id.clone(),
                now,
            }
        } else {
            UserCommand::Deactivate {
                reason,
                actor: caller.user_id.clone(),
                now,
            }
        };
        let options = ExecuteOptions {
            expected_revision,
            ..ExecuteOptions::default()
        };
        let executed = user_result(
            self.users
                .execute_with(&user_stream(user_id)?, &command, &options)
                .await,
        )?;
        let mut user = executed.state.user.ok_or(AppError::NotFound)?;
        user.revision = executed.revision.unwrap_or(0);
        Ok(user)
    }

    /// UnbindTelegram: the user themselves (if email and password remain to log in with), or
    /// the tutor of their tenancy, an admin of that tutor's school, or a platform admin. The
    /// bot's sessions end (refresh checks the cut-off) and the Telegram id is released.
    pub async fn unbind_telegram(
        &self,
        caller: &Caller,
        user_id: &str,
        expected_revision: Option<u64>,
    ) -> Result<pb::User, AppError> {
        let now = Utc::now();
        let account = self.load_user(user_id).await?;
        let target = account.user.clone().ok_or(AppError::NotFound)?;
        if self.visibility(caller, &target).await == Visibility::Hidden {
            return Err(AppError::NotFound);
        }
        if user_id == caller.user_id {
            if target.telegram_user_id != 0
                && (target.email.is_empty() || account.password_hash.is_empty())
            {
                return Err(AppError::rule(
                    "LAST_LOGIN_METHOD",
                    "without telegram the account would have no way to log in",
                ));
            }
        } else {
            let mut manages = caller.is_platform_admin();
            for tutor in tutors_of(&target) {
                if manages {
                    break;
                }
                manages = (caller.is_tutor() && tutor == caller.user_id)
                    || self.administers_tutor(caller, tutor).await;
            }
            if !manages {
                return Err(AppError::denied(
                    "only the user, their tutor or an admin unbinds telegram",
                ));
            }
        }
        let telegram_user_id = target.telegram_user_id;
        let options = ExecuteOptions {
            expected_revision,
            ..ExecuteOptions::default()
        };
        let command = UserCommand::UnbindTelegram {
            actor: caller.user_id.clone(),
            now,
        };
        let executed = user_result(
            self.users
                .execute_with(&user_stream(user_id)?, &command, &options)
                .await,
        )?;
        let release = LoginNameCommand::ReleaseTelegram {
            telegram_user_id,
            user_id: user_id.to_owned(),
            actor: caller.user_id.clone(),
            now,
        };
        if let Err(error) = self
            .names
            .execute(&super::telegram_stream(telegram_user_id)?, &release)
            .await
        {
            // The account no longer uses it; a stuck claim only blocks rebinding that id.
            tracing::warn!(%error, "failed to release a telegram login name");
        }
        let mut user = executed.state.user.ok_or(AppError::NotFound)?;
        user.revision = executed.revision.unwrap_or(0);
        Ok(user)
    }

    /// RotateSigningKey (platform admin only); the verifier of this process learns the new key
    /// set at once.
    pub async fn rotate_signing_key(
        &self,
        caller: &Caller,
        activation_delay: TimeDelta,
        previous_grace: TimeDelta,
        revoke_previous: bool,
    ) -> Result<crate::keys::Rotated, AppError> {
        if !caller.is_platform_admin() {
            return Err(AppError::denied(
                "only a platform admin rotates signing keys",
            ));
        }
        let rotated = self
            .keys
            .rotate_with(
                activation_delay,
                previous_grace,
                revoke_previous,
                &caller.user_id,
                Utc::now(),
                &ExecuteOptions::default(),
            )
            .await
            .map_err(|e| match e {
                KeyError::RotationInProgress => AppError::rule(
                    "ROTATION_IN_PROGRESS",
                    "a key generated earlier is not active yet",
                ),
                other => AppError::Unavailable(other.to_string()),
            })?;
        self.publish_keys().await?;
        Ok(rotated)
    }

    /// The access token lifetime (the minimum grace of a rotated key).
    pub fn access_token_lifetime(&self) -> TimeDelta {
        TimeDelta::from_std(self.settings.access_token_lifetime).unwrap_or(TimeDelta::minutes(15))
    }
}
