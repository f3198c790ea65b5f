//! The Telegram bot: a teloxide application that is just another gRPC client of the gateway.
//!
//! Status: not built yet. It will hold `/start <code>`, the per-role menus (tutor, student, parent) in
//! Russian and English, and the calls it makes through the gateway on behalf of each user.
