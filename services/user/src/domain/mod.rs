//! The user service's aggregates, pure (stream names are permanent; see
//! `proto/repit/user/v1/events.proto`):
//!
//! - [`user`]: `user-<user_id>`, one account.
//! - [`invite`]: `invite-<invite_id>`, an invite with its use limit and expiry, found by its
//!   code through `invite-code-<sha256>`.
//! - [`login_name`]: `login-email-<sha256>` / `login-telegram-<id>`, so a login name has one
//!   account, however concurrent the sign-ups.
//! - [`school`]: `school-<school_id>`, a school's name (its members are grants on user streams).
//! - [`session`]: `session-<session_id>`, one family of rotating refresh tokens with reuse
//!   detection.
//! - [`signing_keys`]: `signing-keys`, the ring of token signing keys (sealed private keys,
//!   activation delay, grace for the previous key, revocation).

pub mod invite;
pub mod invite_code;
pub mod login_name;
pub mod school;
pub mod session;
pub mod signing_keys;
pub mod user;

pub use invite::{InviteAggregate, InviteCommand, InviteError, InviteEvent};
pub use login_name::{LoginNameAggregate, LoginNameCommand, LoginNameError, LoginNameEvent};
pub use session::{SessionAggregate, SessionCommand, SessionError, SessionEvent};
pub use signing_keys::{SigningKeyCommand, SigningKeyError, SigningKeyEvent, SigningKeyRing};
pub use user::{UserAggregate, UserCommand, UserError, UserEvent};
