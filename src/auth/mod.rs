//! Accounts and security (issue 8, DESIGN.md section 8). So far: access tokens.

pub mod jwt;
