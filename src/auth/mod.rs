//! Accounts and security (issue 8, DESIGN.md section 8). So far: access tokens, and the
//! comparison every signature check uses.

pub mod jwt;

/// Equality whose time does not depend on where the inputs differ (signatures, MACs, token
/// hashes); only a length difference returns early.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
