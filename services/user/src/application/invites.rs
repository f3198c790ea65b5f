//! Invites and Telegram: creating, previewing, redeeming and revoking invites, and logging in
//! through the bot.
//!
//! A code is 16 random bytes in base64url (22 characters, a valid Telegram start parameter); only
//! its SHA-256 is stored, as the name of the lookup stream `invite-code-<sha256>` and in the
//! invite. Redemption takes the invite's use first (the invite stream is where the use limit
//! holds under concurrency) and then applies its effects — account, Telegram binding, role,
//! parent link — each of which is idempotent, so a retry by the same redeemer finishes what an
//! interrupted one started without using the invite again.

use base64::Engine;
use chrono::{DateTime, TimeDelta, Utc};
use repit_event_store::RepositoryError;
use repit_event_store::aggregate::ExecuteOptions;
use repit_platform::auth::Caller;
use repit_proto::repit::common::v1::Language;
use repit_proto::repit::user::v1 as pb;
use uuid::Uuid;

use super::{
    AppError, Tokens, UserApplication, email_stream, hash_password, id_for, invite_code_stream,
    invite_stream, normalise_email, sha256_hex, telegram_stream, user_result, user_stream,
    verify_password,
};
use crate::domain::invite::CreateInvite;
use crate::domain::invite_code::{ClaimInviteCode, InviteCodeTaken};
use crate::domain::user::{ParentLink, Register};
use crate::domain::{
    InviteAggregate, InviteCommand, InviteError, LoginNameCommand, LoginNameError, UserAggregate,
    UserCommand, UserError,
};

/// How long a Telegram binding invite stays valid.
const BINDING_INVITE_LIFETIME: TimeDelta = TimeDelta::minutes(15);

/// A JOIN invite to create, parsed and validated (scope fields match the role).
#[derive(Clone, Debug)]
pub struct NewInvite {
    pub request_id: String,
    pub role: pb::Role,
    /// STUDENT and PARENT; empty means the caller's own tenancy.
    pub tutor_id: String,
    /// TUTOR and ADMIN; empty ADMIN means platform admin.
    pub school_id: String,
    pub target_user_id: String,
    pub student_id: String,
    pub expires_at: DateTime<Utc>,
    pub max_uses: i32,
    pub note: String,
}

/// Who redeems an invite.
#[derive(Clone, Debug)]
pub enum Redeemer {
    /// The bot for a Telegram user (the credential was checked already).
    Telegram {
        telegram_user_id: i64,
        profile: pb::TelegramProfile,
    },
    /// A browser sign-up through an invite link.
    NewAccount { email: String, password: String },
    /// The authenticated caller.
    CurrentUser(Caller),
}

/// What a redemption did (RedeemInviteResponse).
#[derive(Clone, Debug)]
pub struct Redeemed {
    pub user: pb::User,
    pub granted_roles: Vec<pb::RoleGrant>,
    pub account_created: bool,
    pub telegram_bound: bool,
    pub linked_student_id: String,
    pub tokens: Option<Tokens>,
    pub revision: u64,
}

/// A fresh invite code: 16 random bytes, base64url without padding (22 characters).
fn new_code() -> String {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `code` is shaped like one of ours (so garbage never reaches the store).
fn is_code(code: &str) -> bool {
    code.len() == 22
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn invite_refusal(error: InviteError) -> AppError {
    match error.violation() {
        Some(violation) => AppError::rule(violation, error.to_string()),
        None => AppError::Missing("invite not found"),
    }
}

fn invite_result<T>(result: Result<T, RepositoryError<InviteError>>) -> Result<T, AppError> {
    match result {
        Ok(value) => Ok(value),
        Err(RepositoryError::Domain(error)) => Err(invite_refusal(error)),
        Err(other) => Err(other.into()),
    }
}

/// The grant a JOIN invite gives.
fn invite_grant(invite: &pb::Invite) -> Option<pb::RoleGrant> {
    (invite.kind() == pb::InviteKind::Join).then(|| pb::RoleGrant {
        role: invite.role,
        tutor_id: invite.tutor_id.clone(),
        school_id: invite.school_id.clone(),
        granted_at: None,
    })
}

impl UserApplication {
    /// The deep link that opens the bot with `code`.
    pub fn deep_link(&self, code: &str) -> String {
        format!("https://t.me/{}?start={code}", self.settings.bot_username)
    }

    /// CreateInvite: checks the caller may invite into the scope, then stores the invite and
    /// its code. A retry with the same request id answers the invite without a code.
    pub async fn create_invite(
        &self,
        caller: &Caller,
        new: NewInvite,
    ) -> Result<(pb::Invite, Option<String>), AppError> {
        let now = Utc::now();
        let mut new = new;
        match new.role {
            pb::Role::Student | pb::Role::Parent => {
                if new.tutor_id.is_empty() {
                    if !caller.is_tutor() {
                        return Err(AppError::denied(
                            "only tutors and their school's admins invite students and parents",
                        ));
                    }
                    new.tutor_id.clone_from(&caller.user_id);
                }
                self.check_manages_tenancy(caller, &new.tutor_id).await?;
                if !new.target_user_id.is_empty() {
                    let target = self.load_user(&new.target_user_id).await?;
                    let user = target.user.as_ref().ok_or(AppError::NotFound)?;
                    if !target.user.as_ref().is_some_and(|u| {
                        u.roles
                            .iter()
                            .any(|g| g.tutor_id == new.tutor_id && g.role() != pb::Role::Tutor)
                    }) {
                        // Not of this tenancy: not visible to the inviter.
                        return Err(AppError::NotFound);
                    }
                    if !target.holds(new.role, &new.tutor_id, "") {
                        return Err(AppError::rule(
                            "TARGET_ROLE_MISMATCH",
                            "the target does not hold the invited role in this tenancy",
                        ));
                    }
                    if user.telegram_user_id != 0 {
                        return Err(AppError::rule(
                            "TARGET_ALREADY_BOUND",
                            "the target account has telegram bound already",
                        ));
                    }
                }
                if !new.student_id.is_empty() {
                    let student = self.load_user(&new.student_id).await?;
                    if !student.holds(pb::Role::Student, &new.tutor_id, "") {
                        return Err(AppError::NotFound);
                    }
                    if student
                        .user
                        .as_ref()
                        .is_some_and(|u| u.parent_ids.len() >= crate::domain::user::MAX_PARENTS)
                    {
                        return Err(AppError::rule(
                            "PARENT_LIMIT_REACHED",
                            "the student has two parents already",
                        ));
                    }
                }
            }
            pb::Role::Tutor | pb::Role::Admin => {
                let allowed = if new.school_id.is_empty() {
                    new.role == pb::Role::Admin && caller.is_platform_admin()
                } else {
                    caller.administers_school(&new.school_id)
                };
                if !allowed {
                    return Err(AppError::denied(
                        "only the school's admins invite its tutors and admins",
                    ));
                }
                if !new.school_id.is_empty() && self.school(&new.school_id).await?.is_none() {
                    return Err(AppError::Missing("school not found"));
                }
            }
            pb::Role::Unspecified => return Err(AppError::invalid("role", "required")),
        }
        self.store_invite(
            caller,
            CreateInvite {
                invite_id: id_for("invite", &new.request_id),
                kind: pb::InviteKind::Join,
                code_sha256: String::new(),
                role: new.role,
                tutor_id: new.tutor_id,
                school_id: new.school_id,
                target_user_id: new.target_user_id,
                student_id: new.student_id,
                expires_at: new.expires_at,
                max_uses: new.max_uses,
                note: new.note,
                actor: caller.user_id.clone(),
                now,
            },
        )
        .await
    }

    /// CreateTelegramBindingInvite: a single-use code, valid 15 minutes, binding the caller's
    /// account to the Telegram account that redeems it.
    pub async fn create_binding_invite(
        &self,
        caller: &Caller,
        request_id: &str,
    ) -> Result<(pb::Invite, Option<String>), AppError> {
        let now = Utc::now();
        let account = self.load_user(&caller.user_id).await?;
        let user = account.user.as_ref().ok_or(AppError::NotFound)?;
        if user.telegram_user_id != 0 {
            return Err(AppError::rule(
                "TELEGRAM_ALREADY_BOUND",
                "the account has telegram bound already",
            ));
        }
        self.store_invite(
            caller,
            CreateInvite {
                invite_id: id_for("binding-invite", request_id),
                kind: pb::InviteKind::BindTelegram,
                code_sha256: String::new(),
                role: pb::Role::Unspecified,
                tutor_id: String::new(),
                school_id: String::new(),
                target_user_id: caller.user_id.clone(),
                student_id: String::new(),
                expires_at: now + BINDING_INVITE_LIFETIME,
                max_uses: 1,
                note: String::new(),
                actor: caller.user_id.clone(),
                now,
            },
        )
        .await
    }

    /// Claims a fresh code and creates the invite; an existing invite (a retry) is answered
    /// without a code.
    async fn store_invite(
        &self,
        caller: &Caller,
        mut create: CreateInvite,
    ) -> Result<(pb::Invite, Option<String>), AppError> {
        let now = create.now;
        let stream = invite_stream(&create.invite_id)?;
        let existing = self.invites.load(&stream).await?;
        if existing.state.invite.is_some() {
            let invite = existing
                .state
                .view(now, existing.revision)
                .ok_or(AppError::Missing("invite not found"))?;
            return Ok((invite, None));
        }
        let code = new_code();
        create.code_sha256 = sha256_hex(&code);
        let claim = ClaimInviteCode {
            code_sha256: create.code_sha256.clone(),
            invite_id: create.invite_id.clone(),
            actor: caller.user_id.clone(),
            now,
        };
        let assume_new = ExecuteOptions {
            assume_new: true,
            ..ExecuteOptions::default()
        };
        match self
            .codes
            .execute_with(
                &invite_code_stream(&create.code_sha256)?,
                &claim,
                &assume_new,
            )
            .await
        {
            Ok(_) => {}
            // 128 random bits never collide; should they, the client retries.
            Err(RepositoryError::Domain(InviteCodeTaken)) => {
                return Err(AppError::Aborted("invite code collision; retry".to_owned()));
            }
            Err(other) => return Err(other.into()),
        }
        let executed = match self
            .invites
            .execute_with(
                &stream,
                &InviteCommand::Create(Box::new(create)),
                &assume_new,
            )
            .await
        {
            Ok(executed) => executed,
            Err(RepositoryError::Domain(InviteError::AlreadyExists)) => {
                // A concurrent retry created it first: its code is the one shown.
                let loaded = self.invites.load(&stream).await?;
                let invite = loaded
                    .state
                    .view(now, loaded.revision)
                    .ok_or(AppError::Missing("invite not found"))?;
                return Ok((invite, None));
            }
            Err(other) => return Err(other.into()),
        };
        let invite = executed
            .state
            .view(now, executed.revision)
            .ok_or(AppError::Missing("invite not found"))?;
        Ok((invite, Some(code)))
    }

    /// The invite a code names, with its revision; NOT_FOUND for an unknown code.
    async fn find_invite(&self, code: &str) -> Result<(InviteAggregate, Option<u64>), AppError> {
        const UNKNOWN: AppError = AppError::Missing("invite not found");
        if !is_code(code) {
            return Err(UNKNOWN);
        }
        let sha = sha256_hex(code);
        let Some(invite_id) = self
            .codes
            .load(&invite_code_stream(&sha)?)
            .await?
            .state
            .invite_id
        else {
            return Err(UNKNOWN);
        };
        let loaded = self.invites.load(&invite_stream(&invite_id)?).await?;
        if loaded.state.invite.is_none() || loaded.state.code_sha256 != sha {
            return Err(UNKNOWN);
        }
        Ok((loaded.state, loaded.revision))
    }

    /// PreviewInvite: what the code would do; uses nothing.
    pub async fn preview_invite(&self, code: &str) -> Result<pb::PreviewInviteResponse, AppError> {
        let now = Utc::now();
        let (state, _) = self.find_invite(code).await?;
        if let Some(refusal) = state.refusal_at(now) {
            return Err(invite_refusal(refusal));
        }
        let invite = state.invite.unwrap_or_default();
        let name_of = |id: String| async move {
            if id.is_empty() {
                return String::new();
            }
            self.load_user(&id)
                .await
                .ok()
                .and_then(|u| u.user)
                .map(|u| u.display_name)
                .unwrap_or_default()
        };
        Ok(pb::PreviewInviteResponse {
            kind: invite.kind,
            role: invite.role,
            tutor_display_name: name_of(invite.tutor_id.clone()).await,
            school_name: match invite.school_id.as_str() {
                "" => String::new(),
                school => self
                    .school(school)
                    .await
                    .ok()
                    .flatten()
                    .map(|s| s.name)
                    .unwrap_or_default(),
            },
            target_display_name: name_of(invite.target_user_id.clone()).await,
            student_display_name: name_of(invite.student_id.clone()).await,
            note: invite.note,
            expires_at: invite.expires_at,
        })
    }

    /// RevokeInvite: the creator, the tutor of its tenancy, or an admin of its school.
    pub async fn revoke_invite(
        &self,
        caller: &Caller,
        invite_id: &str,
        expected_revision: Option<u64>,
    ) -> Result<pb::Invite, AppError> {
        let now = Utc::now();
        let stream = invite_stream(invite_id)?;
        let loaded = self.invites.load(&stream).await?;
        let invite = loaded
            .state
            .invite
            .as_ref()
            .ok_or(AppError::Missing("invite not found"))?;
        let manages = invite.created_by_user_id == caller.user_id
            || (!invite.tutor_id.is_empty()
                && self
                    .check_manages_tenancy(caller, &invite.tutor_id)
                    .await
                    .is_ok())
            || (!invite.school_id.is_empty() && caller.administers_school(&invite.school_id))
            || caller.is_platform_admin();
        if !manages {
            // Visible to members of its tenancy, hidden from everyone else.
            let visible = !invite.tutor_id.is_empty() && caller.in_tenancy_of(&invite.tutor_id);
            return Err(if visible {
                AppError::denied("only the inviter and the tenancy's tutor revoke an invite")
            } else {
                AppError::Missing("invite not found")
            });
        }
        let options = ExecuteOptions {
            expected_revision,
            ..ExecuteOptions::default()
        };
        let command = InviteCommand::Revoke {
            actor: caller.user_id.clone(),
            now,
        };
        let executed = invite_result(self.invites.execute_with(&stream, &command, &options).await)?;
        executed
            .state
            .view(now, executed.revision)
            .ok_or(AppError::Missing("invite not found"))
    }

    /// RedeemInvite; see the module documentation for the order of effects.
    #[allow(clippy::too_many_lines)] // one use case, read top-down
    pub async fn redeem_invite(
        &self,
        code: &str,
        redeemer: Redeemer,
        display_name: String,
        time_zone: String,
        language: Language,
        client_name: String,
    ) -> Result<Redeemed, AppError> {
        let now = Utc::now();
        let (state, _) = self.find_invite(code).await?;
        let invite = state.invite.clone().unwrap_or_default();
        let kind = invite.kind();
        let target = invite.target_user_id.clone();
        let telegram_id = match &redeemer {
            Redeemer::Telegram {
                telegram_user_id, ..
            } => *telegram_user_id,
            _ => 0,
        };

        // Whose account redeems, and whether it has to be created.
        let (user_id, account): (String, Option<UserAggregate>) = match &redeemer {
            Redeemer::Telegram {
                telegram_user_id, ..
            } => {
                let holder = self
                    .names
                    .load(&telegram_stream(*telegram_user_id)?)
                    .await?
                    .state
                    .holder;
                match holder {
                    Some(holder) => {
                        if !target.is_empty() && holder != target {
                            return Err(AppError::rule(
                                "TELEGRAM_ALREADY_BOUND",
                                "the telegram id belongs to another account",
                            ));
                        }
                        let account = self.load_user(&holder).await?;
                        (holder, Some(account))
                    }
                    None if !target.is_empty() => {
                        let account = self.load_user(&target).await?;
                        // A JOIN target must still be PENDING (claimed by nobody); a binding
                        // invite's target is its active creator, without Telegram.
                        let claimed = account.user.as_ref().is_some_and(|u| {
                            u.telegram_user_id != 0
                                || (kind == pb::InviteKind::Join
                                    && u.status() != pb::UserStatus::Pending)
                        });
                        if claimed {
                            return Err(AppError::rule(
                                "TARGET_ALREADY_CLAIMED",
                                "the account was claimed by someone else",
                            ));
                        }
                        (target.clone(), Some(account))
                    }
                    None => {
                        let id = derived_id(&invite.invite_id, &format!("tg:{telegram_user_id}"));
                        let existing = self.load_user(&id).await.ok();
                        (id, existing)
                    }
                }
            }
            Redeemer::NewAccount { email, password } => {
                if kind == pb::InviteKind::BindTelegram {
                    return Err(AppError::invalid(
                        "new_account",
                        "not allowed for a telegram binding invite",
                    ));
                }
                let email = normalise_email(email);
                let holder = self.names.load(&email_stream(&email)?).await?.state.holder;
                let id = if target.is_empty() {
                    derived_id(&invite.invite_id, &format!("email:{email}"))
                } else {
                    target.clone()
                };
                match holder {
                    Some(holder) if holder != id => {
                        return Err(AppError::AlreadyExists("the email already has an account"));
                    }
                    _ => {}
                }
                let existing = self.load_user(&id).await.ok();
                if let Some(account) = &existing
                    && account
                        .user
                        .as_ref()
                        .is_some_and(|u| u.status() != pb::UserStatus::Pending)
                {
                    // Claimed already: only a retry by the same person (same email, same
                    // password) may go on, or it would hand out a session to the account.
                    let same = account.user.as_ref().is_some_and(|u| u.email == email)
                        && !account.password_hash.is_empty()
                        && verify_password(password.clone(), account.password_hash.clone()).await;
                    if !same {
                        return Err(if target.is_empty() {
                            AppError::AlreadyExists("the email already has an account")
                        } else {
                            AppError::rule(
                                "TARGET_ALREADY_CLAIMED",
                                "the account was claimed by someone else",
                            )
                        });
                    }
                }
                (id, existing)
            }
            Redeemer::CurrentUser(caller) => {
                if kind == pb::InviteKind::BindTelegram || !target.is_empty() {
                    return Err(AppError::invalid(
                        "current_user",
                        "not allowed for a telegram binding or targeted invite",
                    ));
                }
                let account = self.load_user(&caller.user_id).await?;
                (caller.user_id.clone(), Some(account))
            }
        };
        if account
            .as_ref()
            .and_then(|a| a.user.as_ref())
            .is_some_and(|u| u.status() == pb::UserStatus::Deactivated)
        {
            return Err(AppError::rule(
                "ACCOUNT_DEACTIVATED",
                "the account is deactivated",
            ));
        }
        let create = account.as_ref().is_none_or(|a| a.user.is_none());

        // Refusals that need no write, before the use is taken.
        if !state.redeemed_by.contains(&user_id)
            && let Some(refusal) = state.refusal_at(now)
        {
            return Err(invite_refusal(refusal));
        }
        let parent_link = (invite.role() == pb::Role::Parent
            && kind == pb::InviteKind::Join
            && !invite.student_id.is_empty())
        .then(|| ParentLink {
            student_id: invite.student_id.clone(),
            parent_id: user_id.clone(),
            tutor_id: invite.tutor_id.clone(),
            invite_id: invite.invite_id.clone(),
            actor: user_id.clone(),
            now,
        });
        if let Some(link) = &parent_link {
            if link.student_id == user_id {
                return Err(AppError::rule(
                    "CANNOT_BE_OWN_PARENT",
                    "a user cannot be their own parent",
                ));
            }
            let student = self.load_user(&link.student_id).await?;
            let parents = student.user.map(|u| u.parent_ids).unwrap_or_default();
            if !parents.contains(&user_id) && parents.len() >= crate::domain::user::MAX_PARENTS {
                return Err(AppError::rule(
                    "PARENT_LIMIT_REACHED",
                    "the student has two parents already",
                ));
            }
        }

        // The use: where the limit holds.
        let redeem = InviteCommand::Redeem {
            user_id: user_id.clone(),
            telegram_user_id: telegram_id,
            account_created: create,
            actor: user_id.clone(),
            now,
        };
        invite_result(
            self.invites
                .execute(&invite_stream(&invite.invite_id)?, &redeem)
                .await,
        )?;

        // The effects, each idempotent.
        let grant = invite_grant(&invite);
        let mut granted_roles = Vec::new();
        let mut telegram_bound = false;
        let user_stream_name = user_stream(&user_id)?;
        if create {
            let (email, password_hash) = match &redeemer {
                Redeemer::NewAccount { email, password } => {
                    let email = normalise_email(email);
                    self.claim_email(&email, &user_id, now).await?;
                    (email, hash_password(password.clone()).await?)
                }
                _ => (String::new(), String::new()),
            };
            let (username, profile_name, language_hint) = match &redeemer {
                Redeemer::Telegram {
                    telegram_user_id,
                    profile,
                } => {
                    self.claim_telegram(*telegram_user_id, &user_id, &user_id, now)
                        .await?;
                    telegram_bound = true;
                    let name = format!("{} {}", profile.first_name, profile.last_name)
                        .trim()
                        .to_owned();
                    (
                        profile.username.clone(),
                        name,
                        language_of(&profile.language_code),
                    )
                }
                _ => (String::new(), String::new(), None),
            };
            let tutor = if invite.tutor_id.is_empty() {
                None
            } else {
                self.load_user(&invite.tutor_id)
                    .await
                    .ok()
                    .and_then(|t| t.user)
            };
            let display_name = [display_name, profile_name]
                .into_iter()
                .find(|n| !n.is_empty())
                .unwrap_or_else(|| "Telegram user".to_owned());
            let time_zone = if time_zone.is_empty() {
                tutor
                    .as_ref()
                    .map_or_else(|| "UTC".to_owned(), |t| t.time_zone.clone())
            } else {
                time_zone
            };
            let language = match language {
                Language::Unspecified => language_hint
                    .or_else(|| tutor.as_ref().map(pb::User::language))
                    .filter(|l| *l != Language::Unspecified)
                    .unwrap_or(Language::En),
                other => other,
            };
            let register = UserCommand::Register(Box::new(Register {
                user_id: user_id.clone(),
                method: pb::RegistrationMethod::Invite,
                display_name,
                email,
                password_hash,
                telegram_user_id: telegram_id,
                telegram_username: username,
                time_zone,
                language,
                invite_id: invite.invite_id.clone(),
                grants: grant.iter().cloned().collect(),
                actor: user_id.clone(),
                now,
            }));
            match self.users.execute(&user_stream_name, &register).await {
                Ok(_) | Err(RepositoryError::Domain(UserError::AlreadyExists)) => {}
                Err(other) => return Err(other.into()),
            }
            granted_roles.extend(grant.clone());
        } else {
            if let Redeemer::Telegram {
                telegram_user_id,
                profile,
            } = &redeemer
            {
                let bound = account
                    .as_ref()
                    .and_then(|a| a.user.as_ref())
                    .is_some_and(|u| u.telegram_user_id == *telegram_user_id);
                if !bound {
                    self.claim_telegram(*telegram_user_id, &user_id, &user_id, now)
                        .await?;
                    let bind = UserCommand::BindTelegram {
                        telegram_user_id: *telegram_user_id,
                        telegram_username: profile.username.clone(),
                        invite_id: invite.invite_id.clone(),
                        actor: user_id.clone(),
                        now,
                    };
                    match self.users.execute(&user_stream_name, &bind).await {
                        Err(RepositoryError::Domain(UserError::TelegramAlreadyBound)) => {
                            return Err(AppError::rule(
                                "TARGET_ALREADY_CLAIMED",
                                "the account was claimed by someone else",
                            ));
                        }
                        other => {
                            user_result(other)?;
                        }
                    }
                    telegram_bound = true;
                }
            }
            if let Redeemer::NewAccount { email, password } = &redeemer {
                // A targeted PENDING account gets these credentials.
                let email = normalise_email(email);
                self.claim_email(&email, &user_id, now).await?;
                let set_email = UserCommand::ChangeEmail {
                    email,
                    actor: user_id.clone(),
                    now,
                };
                user_result(self.users.execute(&user_stream_name, &set_email).await)?;
                if account.as_ref().is_none_or(|a| a.password_hash.is_empty()) {
                    let set_password = UserCommand::ChangePassword {
                        password_hash: hash_password(password.clone()).await?,
                        kept_session_id: String::new(),
                        without_current_password: true,
                        actor: user_id.clone(),
                        now,
                    };
                    user_result(self.users.execute(&user_stream_name, &set_password).await)?;
                }
            }
            if let Some(grant) = &grant {
                let command = UserCommand::GrantRole {
                    grant: grant.clone(),
                    invite_id: invite.invite_id.clone(),
                    actor: user_id.clone(),
                    now,
                };
                match self.users.execute(&user_stream_name, &command).await {
                    Ok(_) => granted_roles.push(grant.clone()),
                    Err(RepositoryError::Domain(UserError::RoleAlreadyHeld)) => {}
                    other => {
                        user_result(other)?;
                    }
                }
            }
        }
        let mut linked_student_id = String::new();
        if let Some(link) = parent_link {
            self.link(link.clone(), true).await?;
            linked_student_id = link.student_id;
        }

        let loaded = self.users.load(&user_stream_name).await?;
        let revision = loaded.revision.unwrap_or(0);
        let mut user = loaded.state.user.clone().ok_or(AppError::NotFound)?;
        user.revision = revision;
        let method = match &redeemer {
            Redeemer::Telegram { .. } => Some(pb::SignInMethod::Telegram),
            Redeemer::NewAccount { .. } => Some(pb::SignInMethod::Password),
            Redeemer::CurrentUser(_) => None,
        };
        let tokens = match method {
            Some(method) => Some(
                self.start_session(&loaded.state, method, client_name, now)
                    .await?,
            ),
            None => None,
        };
        Ok(Redeemed {
            user,
            granted_roles,
            account_created: create,
            telegram_bound,
            linked_student_id,
            tokens,
            revision,
        })
    }

    /// Claims `email` for `user_id` (ALREADY_EXISTS when another account holds it).
    pub(super) async fn claim_email(
        &self,
        email: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let claim = LoginNameCommand::ClaimEmail {
            email: email.to_owned(),
            user_id: user_id.to_owned(),
            now,
        };
        match self.names.execute(&email_stream(email)?, &claim).await {
            Ok(_) => Ok(()),
            Err(RepositoryError::Domain(LoginNameError::Taken)) => {
                Err(AppError::AlreadyExists("the email already has an account"))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// LoginWithTelegram: the bot logs a bound, active account in.
    pub async fn login_with_telegram(
        &self,
        bot_credential: &str,
        telegram_user_id: i64,
        client_name: String,
    ) -> Result<(pb::User, Tokens), AppError> {
        const UNKNOWN: AppError = AppError::BadCredential {
            credential: "telegram_user",
            message: "the telegram user has no active account",
        };
        self.check_bot(bot_credential)?;
        let now = Utc::now();
        let holder = self
            .names
            .load(&telegram_stream(telegram_user_id)?)
            .await?
            .state
            .holder;
        let Some(user_id) = holder else {
            return Err(UNKNOWN);
        };
        let account = self.load_user(&user_id).await?;
        if !account.is_active() {
            return Err(UNKNOWN);
        }
        let tokens = self
            .start_session(&account, pb::SignInMethod::Telegram, client_name, now)
            .await?;
        let loaded = account.user.ok_or(AppError::NotFound)?;
        Ok((loaded, tokens))
    }

    /// The account of `user_id` as its stream tells it (revision set); NOT_FOUND when absent.
    pub(super) async fn load_user(&self, user_id: &str) -> Result<UserAggregate, AppError> {
        if Uuid::parse_str(user_id).is_err() {
            return Err(AppError::NotFound);
        }
        let loaded = self.users.load(&user_stream(user_id)?).await?;
        let mut state = loaded.state;
        match &mut state.user {
            Some(user) => user.revision = loaded.revision.unwrap_or(0),
            None => return Err(AppError::NotFound),
        }
        Ok(state)
    }
}

/// The id of the account a redemption creates: the same for a retry by the same redeemer.
fn derived_id(invite_id: &str, redeemer: &str) -> String {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("repit.user/invite/{invite_id}/{redeemer}").as_bytes(),
    )
    .to_string()
}

/// The account language a Telegram language code hints at.
fn language_of(code: &str) -> Option<Language> {
    match code.split(['-', '_']).next() {
        Some("ru") => Some(Language::Ru),
        Some("en") => Some(Language::En),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_22_url_safe_characters_and_only_such_strings_are_looked_up() {
        for _ in 0..100 {
            let code = new_code();
            assert!(is_code(&code), "{code}");
        }
        assert!(!is_code("short"));
        assert!(!is_code("aaaaaaaaaaaaaaaaaaaaa/"));
        assert_ne!(new_code(), new_code());
    }

    #[test]
    fn a_retried_redemption_creates_the_same_account() {
        assert_eq!(derived_id("i", "tg:1"), derived_id("i", "tg:1"));
        assert_ne!(derived_id("i", "tg:1"), derived_id("i", "tg:2"));
    }
}
