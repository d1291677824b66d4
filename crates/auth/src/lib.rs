//! Access control: SCRAM authentication, users and roles, privileges.
//!
//! - [`scram`]: SCRAM-SHA-1 and SCRAM-SHA-256 credentials, server conversations, and the
//!   client side members use to authenticate to each other.
//! - [`privilege`]: resources, actions, and whether granted privileges cover a need.
//! - [`actions`]: MongoDB's privilege action names.
//! - [`builtin`]: the built-in roles and their privileges.
//! - [`roles`]: the built-in roles, user-defined role documents, and resolving a user's
//!   roles (with everything they inherit) into privileges.
//! - [`user`]: user documents as `admin.system.users` holds them.
//!
//! Pure functions and data: where users and roles are stored, and which command needs
//! which privilege, is the commands layer's business.

pub mod actions;
pub mod builtin;
pub mod privilege;
pub mod roles;
pub mod scram;
pub mod user;

pub use privilege::{Privilege, PrivilegeSet, Resource, Target};
pub use roles::{RoleDoc, RoleName};
pub use scram::{Client, Conversation, Credential, Mechanism};
pub use user::UserDoc;
