//! The built-in handlers. Each lives in its own file and is registered once,
//! in [`crate::registry::BUILTINS`].

pub mod echo;
pub mod fail;
pub mod json_transform;
