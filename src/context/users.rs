//! User ids to names, cached (the passwd lookup is not free).

use std::collections::HashMap;
use std::ffi::CStr;

#[derive(Default)]
pub struct Users {
    names: HashMap<u32, Option<String>>,
}

impl Users {
    pub fn name(&mut self, uid: u32) -> Option<&str> {
        self.names.entry(uid).or_insert_with(|| lookup(uid)).as_deref()
    }
}

fn lookup(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero passwd is a valid value to be overwritten.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into pwd and buf, both ours and sized.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into buf, NUL-terminated.
    Some(unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_root() {
        let mut users = Users::default();
        assert_eq!(users.name(0), Some("root"));
        assert_eq!(users.name(4_000_000_000), None);
    }
}
