//! The user aggregate (`user-<user_id>`): one account — credentials, Telegram binding, roles,
//! parent links, profile, sessions' cut-off, deactivation.

use chrono::{DateTime, Utc};
use repit_event_store::Aggregate;
use repit_proto::repit::common::v1::Language;
use repit_proto::repit::user::v1 as pb;

use repit_platform::time::{from_timestamp, timestamp};

repit_platform::proto_events! {
    /// What happens to an account.
    UserEvent, UserCodec, "repit.user.v1", repit_proto::repit::user::v1 {
        Registered(UserRegistered),
        TelegramBound(TelegramBound),
        TelegramUnbound(TelegramUnbound),
        TelegramUsernameChanged(TelegramUsernameChanged),
        RoleGranted(RoleGranted),
        RoleRevoked(RoleRevoked),
        ParentLinked(ParentLinked),
        ParentUnlinked(ParentUnlinked),
        ProfileChanged(ProfileChanged),
        EmailChanged(EmailChanged),
        PasswordChanged(PasswordChanged),
        LoggedOutEverywhere(LoggedOutEverywhere),
        Deactivated(UserDeactivated),
        Reactivated(UserReactivated),
    }
}

/// An account as its stream tells it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserAggregate {
    /// The resource; `None` until registered.
    pub user: Option<pb::User>,
    /// argon2id PHC string; empty without a password.
    pub password_hash: String,
    /// Sessions started before this instant are over (log out everywhere, password change).
    pub sessions_dead_before: Option<DateTime<Utc>>,
    /// The request that registered it, to recognise a retried sign-up.
    pub request_id: String,
    /// The session that survived the last password change (empty: none).
    pub kept_session_id: String,
    /// Sessions started through the bot before this instant are over (Telegram was unbound).
    pub telegram_sessions_dead_before: Option<DateTime<Utc>>,
}

/// A PENDING account becomes ACTIVE once it has a way to log in.
fn claimed(user: &mut pb::User) {
    if user.status() == pb::UserStatus::Pending {
        user.status = pb::UserStatus::Active as i32;
    }
}

/// A new tutor account.
#[derive(Clone, Debug, PartialEq)]
pub struct RegisterTutor {
    pub user_id: String,
    pub display_name: String,
    pub email: String,
    pub password_hash: String,
    pub time_zone: String,
    pub language: Language,
    pub now: DateTime<Utc>,
}

/// A new account of any kind: signed up (tutor), created by redeeming an invite, or created by a
/// tutor (PENDING until claimed). `grants` follow as RoleGranted in the same append.
#[derive(Clone, Debug, PartialEq)]
pub struct Register {
    pub user_id: String,
    pub method: pb::RegistrationMethod,
    pub display_name: String,
    pub email: String,
    pub password_hash: String,
    pub telegram_user_id: i64,
    pub telegram_username: String,
    pub time_zone: String,
    pub language: Language,
    pub invite_id: String,
    pub grants: Vec<pb::RoleGrant>,
    pub actor: String,
    pub now: DateTime<Utc>,
}

impl From<&RegisterTutor> for Register {
    fn from(c: &RegisterTutor) -> Self {
        Self {
            user_id: c.user_id.clone(),
            method: pb::RegistrationMethod::SignUp,
            display_name: c.display_name.clone(),
            email: c.email.clone(),
            password_hash: c.password_hash.clone(),
            telegram_user_id: 0,
            telegram_username: String::new(),
            time_zone: c.time_zone.clone(),
            language: c.language,
            invite_id: String::new(),
            grants: vec![pb::RoleGrant {
                role: pb::Role::Tutor as i32,
                ..Default::default()
            }],
            actor: c.user_id.clone(),
            now: c.now,
        }
    }
}

/// A parent link, recorded on the student's stream (which enforces the limit) and mirrored on
/// the parent's (so the parent's `children` claim needs no lookup).
#[derive(Clone, Debug, PartialEq)]
pub struct ParentLink {
    pub student_id: String,
    pub parent_id: String,
    pub tutor_id: String,
    pub invite_id: String,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// A student has at most this many parents (PRODUCT.md §1).
pub const MAX_PARENTS: usize = 2;

/// What may be asked of an account.
#[derive(Clone, Debug, PartialEq)]
pub enum UserCommand {
    RegisterTutor(Box<RegisterTutor>),
    Register(Box<Register>),
    LogoutEverywhere {
        actor: String,
        now: DateTime<Utc>,
    },
    /// Changes the fields that are `Some`.
    ChangeProfile {
        display_name: Option<String>,
        time_zone: Option<String>,
        language: Option<Language>,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Binds a Telegram id (the login name was claimed just before).
    BindTelegram {
        telegram_user_id: i64,
        telegram_username: String,
        invite_id: String,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Grants a role in a scope; [`UserError::RoleAlreadyHeld`] if held.
    GrantRole {
        grant: pb::RoleGrant,
        invite_id: String,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Revokes one grant; [`UserError::RoleNotHeld`] if not held.
    RevokeRole {
        grant: pb::RoleGrant,
        actor: String,
        now: DateTime<Utc>,
    },
    /// On the student's stream: links a parent, at most [`MAX_PARENTS`].
    LinkParent(Box<ParentLink>),
    /// On the parent's stream: records the child of a link made on the student's stream.
    RecordChild(Box<ParentLink>),
    /// On the student's stream: removes a parent link; [`UserError::NotLinked`] if absent.
    UnlinkParent(Box<ParentLink>),
    /// On the parent's stream: forgets the child of a removed link.
    ForgetChild(Box<ParentLink>),
    /// Sets the password; every session but `kept_session_id` started before now ends.
    ChangePassword {
        password_hash: String,
        kept_session_id: String,
        without_current_password: bool,
        actor: String,
        now: DateTime<Utc>,
    },
    /// Sets the login email (claimed in its login-name stream just before).
    ChangeEmail {
        email: String,
        actor: String,
        now: DateTime<Utc>,
    },
    Deactivate {
        reason: String,
        actor: String,
        now: DateTime<Utc>,
    },
    Reactivate {
        actor: String,
        now: DateTime<Utc>,
    },
    /// Removes the Telegram binding (its login name is released after).
    UnbindTelegram {
        actor: String,
        now: DateTime<Utc>,
    },
}

/// Why an account refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("user not found")]
    NotFound,
    #[error("the account already exists")]
    AlreadyExists,
    #[error("the account is deactivated")]
    Deactivated,
    #[error("the account is active")]
    Active,
    #[error("the account has another telegram id bound")]
    TelegramAlreadyBound,
    #[error("the user holds this grant already")]
    RoleAlreadyHeld,
    #[error("the user does not hold this grant")]
    RoleNotHeld,
    #[error("the student has two parents already")]
    ParentLimitReached,
    #[error("a user cannot be their own parent")]
    CannotBeOwnParent,
    #[error("the parent is linked already")]
    AlreadyLinked,
    #[error("the parent is not linked")]
    NotLinked,
    #[error("the account has no telegram bound")]
    NoTelegramBound,
}

impl UserError {
    /// The contract's violation type (user.proto), for FAILED_PRECONDITION.
    pub fn violation(&self) -> Option<&'static str> {
        match self {
            Self::Deactivated => Some("ACCOUNT_DEACTIVATED"),
            Self::Active => Some("ACCOUNT_ACTIVE"),
            Self::TelegramAlreadyBound => Some("TELEGRAM_ALREADY_BOUND"),
            Self::ParentLimitReached => Some("PARENT_LIMIT_REACHED"),
            Self::CannotBeOwnParent => Some("CANNOT_BE_OWN_PARENT"),
            Self::NoTelegramBound => Some("NO_TELEGRAM_BOUND"),
            _ => None,
        }
    }
}

fn same_grant(a: &pb::RoleGrant, role: i32, tutor_id: &str, school_id: &str) -> bool {
    a.role == role && a.tutor_id == tutor_id && a.school_id == school_id
}

fn parent_linked(link: &ParentLink) -> UserEvent {
    UserEvent::ParentLinked(pb::ParentLinked {
        student_id: link.student_id.clone(),
        parent_id: link.parent_id.clone(),
        tutor_id: link.tutor_id.clone(),
        invite_id: link.invite_id.clone(),
        actor_user_id: link.actor.clone(),
        occurred_at: Some(timestamp(link.now)),
    })
}

fn parent_unlinked(link: &ParentLink) -> UserEvent {
    UserEvent::ParentUnlinked(pb::ParentUnlinked {
        student_id: link.student_id.clone(),
        parent_id: link.parent_id.clone(),
        tutor_id: link.tutor_id.clone(),
        actor_user_id: link.actor.clone(),
        occurred_at: Some(timestamp(link.now)),
    })
}

impl UserAggregate {
    /// The account, unless it is missing or deactivated.
    fn live(&self) -> Result<&pb::User, UserError> {
        let user = self.user.as_ref().ok_or(UserError::NotFound)?;
        if user.status() == pb::UserStatus::Deactivated {
            return Err(UserError::Deactivated);
        }
        Ok(user)
    }

    /// Whether the account teaches: holds a tutor grant, of its own practice or of a school.
    pub fn teaches(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| u.roles.iter().any(|g| g.role() == pb::Role::Tutor))
    }

    /// Whether the account holds `role` in the tenancy of `tutor_id`.
    pub fn holds(&self, role: pb::Role, tutor_id: &str, school_id: &str) -> bool {
        self.user.as_ref().is_some_and(|u| {
            u.roles
                .iter()
                .any(|g| same_grant(g, role as i32, tutor_id, school_id))
        })
    }

    /// The cut-off for a session started with `method`: sessions that started before it are
    /// over (log out everywhere, password change, deactivation; Telegram unbound for the bot's).
    /// `None` for the session a password change kept.
    pub fn sessions_cut_off(
        &self,
        session_id: &str,
        method: pb::SignInMethod,
    ) -> Option<DateTime<Utc>> {
        let general = if self.kept_session_id == session_id {
            None
        } else {
            self.sessions_dead_before
        };
        let telegram = (method == pb::SignInMethod::Telegram)
            .then_some(self.telegram_sessions_dead_before)
            .flatten();
        general.max(telegram)
    }

    /// Whether the account may log in and refresh.
    pub fn is_active(&self) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| u.status() == pb::UserStatus::Active)
    }
}

impl Aggregate for UserAggregate {
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;

    fn decide(&self, command: &UserCommand) -> Result<Vec<UserEvent>, UserError> {
        match command {
            UserCommand::RegisterTutor(c) => {
                self.decide(&UserCommand::Register(Box::new(Register::from(c.as_ref()))))
            }
            UserCommand::Register(c) => {
                if self.user.is_some() {
                    return Err(UserError::AlreadyExists);
                }
                let at = Some(timestamp(c.now));
                let mut events = vec![UserEvent::Registered(pb::UserRegistered {
                    user_id: c.user_id.clone(),
                    method: c.method as i32,
                    display_name: c.display_name.clone(),
                    email: c.email.clone(),
                    password_hash: c.password_hash.clone(),
                    telegram_user_id: c.telegram_user_id,
                    telegram_username: c.telegram_username.clone(),
                    time_zone: c.time_zone.clone(),
                    language: c.language as i32,
                    invite_id: c.invite_id.clone(),
                    actor_user_id: c.actor.clone(),
                    occurred_at: at,
                })];
                for grant in &c.grants {
                    events.push(UserEvent::RoleGranted(pb::RoleGranted {
                        user_id: c.user_id.clone(),
                        role: grant.role,
                        tutor_id: grant.tutor_id.clone(),
                        school_id: grant.school_id.clone(),
                        invite_id: c.invite_id.clone(),
                        actor_user_id: c.actor.clone(),
                        occurred_at: at,
                    }));
                }
                Ok(events)
            }
            UserCommand::ChangeProfile {
                display_name,
                time_zone,
                language,
                actor,
                now,
            } => {
                let user = self.user.as_ref().ok_or(UserError::NotFound)?;
                let mut changed = Vec::new();
                let display_name = match display_name {
                    Some(name) if *name != user.display_name => {
                        changed.push("display_name".to_owned());
                        name.clone()
                    }
                    _ => user.display_name.clone(),
                };
                let time_zone = match time_zone {
                    Some(zone) if *zone != user.time_zone => {
                        changed.push("time_zone".to_owned());
                        zone.clone()
                    }
                    _ => user.time_zone.clone(),
                };
                let language = match language {
                    Some(language) if *language as i32 != user.language => {
                        changed.push("language".to_owned());
                        *language as i32
                    }
                    _ => user.language,
                };
                if changed.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::ProfileChanged(pb::ProfileChanged {
                    user_id: user.user_id.clone(),
                    display_name,
                    time_zone,
                    language,
                    changed_fields: Some(prost_types::FieldMask { paths: changed }),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::LogoutEverywhere { actor, now } => {
                let user = self.user.as_ref().ok_or(UserError::NotFound)?;
                Ok(vec![UserEvent::LoggedOutEverywhere(
                    pb::LoggedOutEverywhere {
                        user_id: user.user_id.clone(),
                        actor_user_id: actor.clone(),
                        occurred_at: Some(timestamp(*now)),
                    },
                )])
            }
            UserCommand::BindTelegram {
                telegram_user_id,
                telegram_username,
                invite_id,
                actor,
                now,
            } => {
                let user = self.live()?;
                if user.telegram_user_id == *telegram_user_id {
                    return Ok(vec![]);
                }
                if user.telegram_user_id != 0 {
                    return Err(UserError::TelegramAlreadyBound);
                }
                Ok(vec![UserEvent::TelegramBound(pb::TelegramBound {
                    user_id: user.user_id.clone(),
                    telegram_user_id: *telegram_user_id,
                    telegram_username: telegram_username.clone(),
                    invite_id: invite_id.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::GrantRole {
                grant,
                invite_id,
                actor,
                now,
            } => {
                let user = self.live()?;
                if user
                    .roles
                    .iter()
                    .any(|g| same_grant(g, grant.role, &grant.tutor_id, &grant.school_id))
                {
                    return Err(UserError::RoleAlreadyHeld);
                }
                Ok(vec![UserEvent::RoleGranted(pb::RoleGranted {
                    user_id: user.user_id.clone(),
                    role: grant.role,
                    tutor_id: grant.tutor_id.clone(),
                    school_id: grant.school_id.clone(),
                    invite_id: invite_id.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::RevokeRole { grant, actor, now } => {
                let user = self.user.as_ref().ok_or(UserError::NotFound)?;
                if !user
                    .roles
                    .iter()
                    .any(|g| same_grant(g, grant.role, &grant.tutor_id, &grant.school_id))
                {
                    return Err(UserError::RoleNotHeld);
                }
                Ok(vec![UserEvent::RoleRevoked(pb::RoleRevoked {
                    user_id: user.user_id.clone(),
                    role: grant.role,
                    tutor_id: grant.tutor_id.clone(),
                    school_id: grant.school_id.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::LinkParent(link) => {
                let student = self.user.as_ref().ok_or(UserError::NotFound)?;
                if link.parent_id == student.user_id {
                    return Err(UserError::CannotBeOwnParent);
                }
                if student.parent_ids.contains(&link.parent_id) {
                    return Err(UserError::AlreadyLinked);
                }
                if student.parent_ids.len() >= MAX_PARENTS {
                    return Err(UserError::ParentLimitReached);
                }
                Ok(vec![parent_linked(link)])
            }
            UserCommand::RecordChild(link) => {
                let parent = self.user.as_ref().ok_or(UserError::NotFound)?;
                if parent.child_ids.contains(&link.student_id) {
                    return Ok(vec![]);
                }
                Ok(vec![parent_linked(link)])
            }
            UserCommand::UnlinkParent(link) => {
                let student = self.user.as_ref().ok_or(UserError::NotFound)?;
                if !student.parent_ids.contains(&link.parent_id) {
                    return Err(UserError::NotLinked);
                }
                Ok(vec![parent_unlinked(link)])
            }
            UserCommand::ForgetChild(link) => {
                let parent = self.user.as_ref().ok_or(UserError::NotFound)?;
                if !parent.child_ids.contains(&link.student_id) {
                    return Ok(vec![]);
                }
                Ok(vec![parent_unlinked(link)])
            }
            UserCommand::ChangePassword {
                password_hash,
                kept_session_id,
                without_current_password,
                actor,
                now,
            } => {
                let user = self.live()?;
                Ok(vec![UserEvent::PasswordChanged(pb::PasswordChanged {
                    user_id: user.user_id.clone(),
                    password_hash: password_hash.clone(),
                    kept_session_id: kept_session_id.clone(),
                    without_current_password: *without_current_password,
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::ChangeEmail { email, actor, now } => {
                let user = self.live()?;
                if user.email == *email {
                    return Ok(vec![]);
                }
                Ok(vec![UserEvent::EmailChanged(pb::EmailChanged {
                    user_id: user.user_id.clone(),
                    email: email.clone(),
                    previous_email: user.email.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::Deactivate { reason, actor, now } => {
                let user = self.live()?;
                Ok(vec![UserEvent::Deactivated(pb::UserDeactivated {
                    user_id: user.user_id.clone(),
                    reason: reason.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::UnbindTelegram { actor, now } => {
                let user = self.user.as_ref().ok_or(UserError::NotFound)?;
                if user.telegram_user_id == 0 {
                    return Err(UserError::NoTelegramBound);
                }
                Ok(vec![UserEvent::TelegramUnbound(pb::TelegramUnbound {
                    user_id: user.user_id.clone(),
                    telegram_user_id: user.telegram_user_id,
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
            UserCommand::Reactivate { actor, now } => {
                let user = self.user.as_ref().ok_or(UserError::NotFound)?;
                if user.status() != pb::UserStatus::Deactivated {
                    return Err(UserError::Active);
                }
                Ok(vec![UserEvent::Reactivated(pb::UserReactivated {
                    user_id: user.user_id.clone(),
                    actor_user_id: actor.clone(),
                    occurred_at: Some(timestamp(*now)),
                })])
            }
        }
    }

    fn evolve(&mut self, event: &UserEvent) {
        let Some(user) = &mut self.user else {
            if let UserEvent::Registered(e) = event {
                self.password_hash.clone_from(&e.password_hash);
                self.user = Some(pb::User {
                    user_id: e.user_id.clone(),
                    display_name: e.display_name.clone(),
                    email: e.email.clone(),
                    has_password: !e.password_hash.is_empty(),
                    telegram_user_id: e.telegram_user_id,
                    telegram_username: e.telegram_username.clone(),
                    time_zone: e.time_zone.clone(),
                    language: e.language,
                    status: if e.method() == pb::RegistrationMethod::CreatedByTutor
                        && e.password_hash.is_empty()
                        && e.telegram_user_id == 0
                    {
                        pb::UserStatus::Pending
                    } else {
                        pb::UserStatus::Active
                    } as i32,
                    roles: vec![],
                    parent_ids: vec![],
                    child_ids: vec![],
                    created_at: e.occurred_at,
                    revision: 0,
                });
            }
            return;
        };
        match event {
            UserEvent::Registered(_) => {}
            UserEvent::TelegramBound(e) => {
                user.telegram_user_id = e.telegram_user_id;
                user.telegram_username.clone_from(&e.telegram_username);
                claimed(user);
            }
            UserEvent::TelegramUnbound(e) => {
                user.telegram_user_id = 0;
                user.telegram_username.clear();
                self.telegram_sessions_dead_before = Some(from_timestamp(e.occurred_at.as_ref()));
            }
            UserEvent::TelegramUsernameChanged(e) => {
                user.telegram_username.clone_from(&e.telegram_username);
            }
            UserEvent::RoleGranted(e) => {
                let grant = pb::RoleGrant {
                    role: e.role,
                    tutor_id: e.tutor_id.clone(),
                    school_id: e.school_id.clone(),
                    granted_at: e.occurred_at,
                };
                if !user.roles.iter().any(|g| {
                    g.role == grant.role
                        && g.tutor_id == grant.tutor_id
                        && g.school_id == grant.school_id
                }) {
                    user.roles.push(grant);
                }
            }
            UserEvent::RoleRevoked(e) => user.roles.retain(|g| {
                !(g.role == e.role && g.tutor_id == e.tutor_id && g.school_id == e.school_id)
            }),
            UserEvent::ParentLinked(e) => {
                if e.student_id == user.user_id {
                    if !user.parent_ids.contains(&e.parent_id) {
                        user.parent_ids.push(e.parent_id.clone());
                    }
                } else if e.parent_id == user.user_id && !user.child_ids.contains(&e.student_id) {
                    user.child_ids.push(e.student_id.clone());
                }
            }
            UserEvent::ParentUnlinked(e) => {
                if e.student_id == user.user_id {
                    user.parent_ids.retain(|p| *p != e.parent_id);
                } else if e.parent_id == user.user_id {
                    user.child_ids.retain(|c| *c != e.student_id);
                }
            }
            UserEvent::ProfileChanged(e) => {
                user.display_name.clone_from(&e.display_name);
                user.time_zone.clone_from(&e.time_zone);
                user.language = e.language;
            }
            UserEvent::EmailChanged(e) => user.email.clone_from(&e.email),
            UserEvent::PasswordChanged(e) => {
                self.password_hash.clone_from(&e.password_hash);
                user.has_password = !e.password_hash.is_empty();
                self.sessions_dead_before = Some(from_timestamp(e.occurred_at.as_ref()));
                self.kept_session_id.clone_from(&e.kept_session_id);
                claimed(user);
            }
            UserEvent::LoggedOutEverywhere(e) => {
                self.sessions_dead_before = Some(from_timestamp(e.occurred_at.as_ref()));
                self.kept_session_id.clear();
            }
            UserEvent::Deactivated(e) => {
                user.status = pb::UserStatus::Deactivated as i32;
                self.sessions_dead_before = Some(from_timestamp(e.occurred_at.as_ref()));
                self.kept_session_id.clear();
            }
            UserEvent::Reactivated(_) => user.status = pb::UserStatus::Active as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use repit_event_store::aggregate::given;

    fn register() -> UserCommand {
        UserCommand::RegisterTutor(Box::new(RegisterTutor {
            user_id: "u".into(),
            display_name: "Anna".into(),
            email: "anna@example.com".into(),
            password_hash: "$argon2id$...".into(),
            time_zone: "Europe/Moscow".into(),
            language: Language::Ru,
            now: DateTime::UNIX_EPOCH,
        }))
    }

    #[test]
    fn a_tutor_registers_with_the_tutor_role_of_their_own_practice() {
        let events = UserAggregate::default()
            .decide(&register())
            .unwrap_or_default();
        let mut state = UserAggregate::default();
        events.iter().for_each(|e| state.evolve(e));
        assert!(state.is_active());
        let user = state.user.expect("registered");
        assert_eq!(user.roles.len(), 1);
        assert_eq!(user.roles[0].role(), pb::Role::Tutor);
        assert!(user.has_password && state.password_hash.starts_with("$argon2id$"));
    }

    #[test]
    fn an_account_registers_once() {
        let events = UserAggregate::default()
            .decide(&register())
            .unwrap_or_default();
        given::<UserAggregate>(events)
            .when(&register())
            .then_error(UserError::AlreadyExists);
    }

    #[test]
    fn a_profile_change_names_only_what_changed_and_an_unchanged_one_writes_nothing() {
        let registered = UserAggregate::default()
            .decide(&register())
            .unwrap_or_default();
        let change = |zone: &str| UserCommand::ChangeProfile {
            display_name: Some("Anna".into()),
            time_zone: Some(zone.into()),
            language: None,
            actor: "u".into(),
            now: DateTime::UNIX_EPOCH,
        };
        let result = given::<UserAggregate>(registered.clone())
            .when(&change("Asia/Tokyo"))
            .into_result();
        let Ok(events) = result else {
            panic!("{result:?}")
        };
        let [UserEvent::ProfileChanged(e)] = events.as_slice() else {
            panic!("{events:?}")
        };
        assert_eq!(
            e.changed_fields.as_ref().map(|m| m.paths.clone()),
            Some(vec!["time_zone".to_owned()])
        );
        given::<UserAggregate>(registered)
            .when(&change("Europe/Moscow"))
            .then([]);
    }

    #[test]
    fn logging_out_everywhere_sets_the_sessions_cut_off() {
        let mut state = UserAggregate::default();
        for e in state.decide(&register()).unwrap_or_default() {
            state.evolve(&e);
        }
        let later = DateTime::UNIX_EPOCH + chrono::TimeDelta::hours(1);
        for e in state
            .decide(&UserCommand::LogoutEverywhere {
                actor: "u".into(),
                now: later,
            })
            .unwrap_or_default()
        {
            state.evolve(&e);
        }
        assert_eq!(state.sessions_dead_before, Some(later));
    }

    fn registered(user_id: &str, method: pb::RegistrationMethod, telegram: i64) -> Vec<UserEvent> {
        UserAggregate::default()
            .decide(&UserCommand::Register(Box::new(Register {
                user_id: user_id.into(),
                method,
                display_name: "Masha".into(),
                email: String::new(),
                password_hash: String::new(),
                telegram_user_id: telegram,
                telegram_username: String::new(),
                time_zone: "Europe/Moscow".into(),
                language: Language::Ru,
                invite_id: String::new(),
                grants: vec![pb::RoleGrant {
                    role: pb::Role::Student as i32,
                    tutor_id: "t".into(),
                    ..Default::default()
                }],
                actor: "t".into(),
                now: DateTime::UNIX_EPOCH,
            })))
            .unwrap_or_default()
    }

    fn link(parent: &str) -> ParentLink {
        ParentLink {
            student_id: "s".into(),
            parent_id: parent.into(),
            tutor_id: "t".into(),
            invite_id: String::new(),
            actor: "t".into(),
            now: DateTime::UNIX_EPOCH,
        }
    }

    fn state_of(events: &[UserEvent]) -> UserAggregate {
        let mut state = UserAggregate::default();
        events.iter().for_each(|e| state.evolve(e));
        state
    }

    #[test]
    fn a_student_has_at_most_two_parents_and_is_not_their_own() {
        let mut history = registered("s", pb::RegistrationMethod::Invite, 7);
        history.push(parent_linked(&link("p1")));
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::LinkParent(Box::new(link("p2"))))
            .then([parent_linked(&link("p2"))]);
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::LinkParent(Box::new(link("p1"))))
            .then_error(UserError::AlreadyLinked);
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::LinkParent(Box::new(link("s"))))
            .then_error(UserError::CannotBeOwnParent);
        history.push(parent_linked(&link("p2")));
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::LinkParent(Box::new(link("p3"))))
            .then_error(UserError::ParentLimitReached);
        let state = state_of(&history);
        assert_eq!(
            state.user.map(|u| u.parent_ids),
            Some(vec!["p1".to_owned(), "p2".to_owned()])
        );
    }

    #[test]
    fn a_link_mirrored_on_the_parent_becomes_its_child_once() {
        let mut history = registered("p1", pb::RegistrationMethod::Invite, 8);
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::RecordChild(Box::new(link("p1"))))
            .then([parent_linked(&link("p1"))]);
        history.push(parent_linked(&link("p1")));
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::RecordChild(Box::new(link("p1"))))
            .then([]);
        assert_eq!(
            state_of(&history).user.map(|u| u.child_ids),
            Some(vec!["s".to_owned()])
        );
    }

    #[test]
    fn a_pending_account_becomes_active_when_telegram_is_bound() {
        let history = registered("s", pb::RegistrationMethod::CreatedByTutor, 0);
        let state = state_of(&history);
        assert_eq!(
            state.user.as_ref().map(pb::User::status),
            Some(pb::UserStatus::Pending)
        );
        assert!(!state.is_active());
        let bind = UserCommand::BindTelegram {
            telegram_user_id: 42,
            telegram_username: "masha".into(),
            invite_id: "i".into(),
            actor: "s".into(),
            now: DateTime::UNIX_EPOCH,
        };
        let events = state.decide(&bind).unwrap_or_default();
        let mut state = state;
        events.iter().for_each(|e| state.evolve(e));
        assert!(state.is_active());
        assert_eq!(state.decide(&bind), Ok(vec![]));
        let other = UserCommand::BindTelegram {
            telegram_user_id: 43,
            telegram_username: String::new(),
            invite_id: "i".into(),
            actor: "s".into(),
            now: DateTime::UNIX_EPOCH,
        };
        assert_eq!(state.decide(&other), Err(UserError::TelegramAlreadyBound));
    }

    #[test]
    fn a_grant_is_held_once_and_only_a_held_grant_is_revoked() {
        let history = registered("s", pb::RegistrationMethod::Invite, 7);
        let student = pb::RoleGrant {
            role: pb::Role::Student as i32,
            tutor_id: "t".into(),
            ..Default::default()
        };
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::GrantRole {
                grant: student.clone(),
                invite_id: String::new(),
                actor: "t".into(),
                now: DateTime::UNIX_EPOCH,
            })
            .then_error(UserError::RoleAlreadyHeld);
        let other_tenancy = pb::RoleGrant {
            tutor_id: "t2".into(),
            ..student.clone()
        };
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::RevokeRole {
                grant: other_tenancy,
                actor: "t".into(),
                now: DateTime::UNIX_EPOCH,
            })
            .then_error(UserError::RoleNotHeld);
        assert!(state_of(&history).holds(pb::Role::Student, "t", ""));
    }

    #[test]
    fn a_deactivated_account_refuses_changes_and_reactivates_once() {
        let mut history = registered("s", pb::RegistrationMethod::Invite, 7);
        history.push(UserEvent::Deactivated(pb::UserDeactivated {
            user_id: "s".into(),
            ..Default::default()
        }));
        given::<UserAggregate>(history.clone())
            .when(&UserCommand::Deactivate {
                reason: String::new(),
                actor: "s".into(),
                now: DateTime::UNIX_EPOCH,
            })
            .then_error(UserError::Deactivated);
        let state = state_of(&history);
        assert!(!state.is_active());
        assert!(state.sessions_dead_before.is_some());
        let reactivate = UserCommand::Reactivate {
            actor: "a".into(),
            now: DateTime::UNIX_EPOCH,
        };
        assert!(state.decide(&reactivate).is_ok_and(|e| e.len() == 1));
        given::<UserAggregate>(registered("s", pb::RegistrationMethod::Invite, 7))
            .when(&reactivate)
            .then_error(UserError::Active);
    }

    #[test]
    fn unbinding_telegram_ends_only_the_bots_sessions_and_needs_a_binding() {
        let mut state = state_of(&registered("s", pb::RegistrationMethod::Invite, 7));
        let unbind = UserCommand::UnbindTelegram {
            actor: "t".into(),
            now: DateTime::UNIX_EPOCH + chrono::TimeDelta::hours(1),
        };
        for e in state.decide(&unbind).unwrap_or_default() {
            state.evolve(&e);
        }
        assert_eq!(state.user.as_ref().map(|u| u.telegram_user_id), Some(0));
        assert!(
            state
                .sessions_cut_off("x", pb::SignInMethod::Telegram)
                .is_some()
        );
        assert_eq!(
            state.sessions_cut_off("x", pb::SignInMethod::Password),
            None
        );
        assert_eq!(state.decide(&unbind), Err(UserError::NoTelegramBound));
    }
}
