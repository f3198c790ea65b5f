//! The read models the user service queries.
//!
//! - [`DirectoryProjection`] (`user.directory`): tables `users`, `user_roles`, `parent_links`,
//!   `user_sessions` and `invites`; accounts and invites are folded with their aggregates' own
//!   `evolve`, so a row is what the command answered. ListUsers, ListSessions and ListInvites
//!   read them; the columns are a stable SQL interface for analysts (docs/read-models.md). No
//!   secret reaches them: no password hash, no refresh-token or invite-code hash.

mod directory;

pub use directory::{
    DirectoryProjection, INVITES_TABLE, PARENT_LINKS_TABLE, ROLES_TABLE, SESSIONS_TABLE,
    USERS_TABLE,
};
