//! The user and group databases that `user`/`group` resolve against, behind a trait so tests use a fake.

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// One passwd entry, as much of it as a unit needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Lookups in the passwd and group databases. A failed lookup (NSS error) counts as "not found".
pub trait UserDb {
    fn user_by_name(&self, name: &str) -> Option<UserEntry>;
    fn user_by_uid(&self, uid: u32) -> Option<UserEntry>;
    fn group_by_name(&self, name: &str) -> Option<u32>;
    fn group_exists(&self, gid: u32) -> bool;
    /// Every group `initgroups(user, primary_gid)` would set, `primary_gid` included.
    fn supplementary_groups(&self, user: &str, primary_gid: u32) -> Vec<u32>;
}

/// The host's databases through libc (NSS), via nix.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemUserDb;

fn entry(user: User) -> UserEntry {
    UserEntry {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        home: user.dir,
    }
}

impl UserDb for SystemUserDb {
    fn user_by_name(&self, name: &str) -> Option<UserEntry> {
        User::from_name(name).ok().flatten().map(entry)
    }

    fn user_by_uid(&self, uid: u32) -> Option<UserEntry> {
        User::from_uid(Uid::from_raw(uid)).ok().flatten().map(entry)
    }

    fn group_by_name(&self, name: &str) -> Option<u32> {
        Group::from_name(name)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    }

    fn group_exists(&self, gid: u32) -> bool {
        matches!(Group::from_gid(Gid::from_raw(gid)), Ok(Some(_)))
    }

    fn supplementary_groups(&self, user: &str, primary_gid: u32) -> Vec<u32> {
        CString::new(user)
            .ok()
            .and_then(|name| getgrouplist(&name, Gid::from_raw(primary_gid)).ok())
            .map(|groups| groups.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|| vec![primary_gid])
    }
}

/// An in-memory database: a fake for tests, and for embedding corral where NSS is not wanted.
#[derive(Debug, Clone, Default)]
pub struct MemoryUserDb {
    users: Vec<UserEntry>,
    /// (name, gid, member user names)
    groups: Vec<(String, u32, Vec<String>)>,
}

impl MemoryUserDb {
    pub fn new() -> Self {
        MemoryUserDb::default()
    }

    pub fn with_user(mut self, name: &str, uid: u32, gid: u32, home: &str) -> Self {
        self.users.push(UserEntry {
            name: name.to_owned(),
            uid,
            gid,
            home: PathBuf::from(home),
        });
        self
    }

    pub fn with_group(mut self, name: &str, gid: u32, members: &[&str]) -> Self {
        let members = members.iter().map(|m| (*m).to_owned()).collect();
        self.groups.push((name.to_owned(), gid, members));
        self
    }
}

impl UserDb for MemoryUserDb {
    fn user_by_name(&self, name: &str) -> Option<UserEntry> {
        self.users.iter().find(|u| u.name == name).cloned()
    }

    fn user_by_uid(&self, uid: u32) -> Option<UserEntry> {
        self.users.iter().find(|u| u.uid == uid).cloned()
    }

    fn group_by_name(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, gid, _)| *gid)
    }

    fn group_exists(&self, gid: u32) -> bool {
        self.groups.iter().any(|(_, g, _)| *g == gid)
    }

    fn supplementary_groups(&self, user: &str, primary_gid: u32) -> Vec<u32> {
        let mut groups = vec![primary_gid];
        for (_, gid, members) in &self.groups {
            if members.iter().any(|m| m == user) && !groups.contains(gid) {
                groups.push(*gid);
            }
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_db_knows_root() {
        let db = SystemUserDb;
        let root = db.user_by_uid(0).expect("uid 0 in passwd");
        assert_eq!(root.name, "root");
        assert_eq!(db.user_by_name("root").map(|u| u.uid), Some(0));
        assert!(db.group_exists(0));
        assert!(db.supplementary_groups("root", 0).contains(&0));
        assert_eq!(db.user_by_name("no-such-user-corral"), None);
    }

    #[test]
    fn memory_db_lists_memberships() {
        let db = MemoryUserDb::new()
            .with_user("www", 33, 33, "/var/www")
            .with_group("www", 33, &[])
            .with_group("log", 4, &["www"]);
        assert_eq!(db.supplementary_groups("www", 33), vec![33, 4]);
        assert_eq!(db.group_by_name("log"), Some(4));
    }
}
