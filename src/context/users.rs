//! User ids to names, cached (the passwd lookup is not free) and bounded:
//! uids come from every process on the host, and a user namespace can
//! use any of four billion.

use lru::LruCache;

/// Past this many uids, the least recently seen is looked up again when
/// it comes back.
const MAX_USERS: usize = 4096;

pub struct Users {
    names: LruCache<u32, Option<String>>,
}

impl Default for Users {
    fn default() -> Self {
        Users { names: super::bounded(MAX_USERS) }
    }
}

impl Users {
    pub fn name(&mut self, uid: u32) -> Option<&str> {
        self.names.get_or_insert(uid, || lookup(uid)).as_deref()
    }
}

/// The passwd database's name for `uid` (NSS included), as text.
fn lookup(uid: u32) -> Option<String> {
    uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
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

    #[test]
    fn the_cache_stays_bounded() {
        let mut users = Users::default();
        for uid in 0..(MAX_USERS as u32 + 100) {
            users.name(1_000_000 + uid);
        }
        assert_eq!(users.names.len(), MAX_USERS);
        assert_eq!(users.name(0), Some("root"));
    }
}
