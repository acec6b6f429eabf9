//! The workload and its model: every host user the chaos run makes up, what
//! it wrote into the outbox for each, and what the end state must therefore
//! be. The expectations come from here, never from the worker's tables.
//!
//! Every email and name the run writes carries a token `q_` + 7 digits +
//! `_x` (case aside) found nowhere else (not in ids, hex or base32), so that
//! a leak check looks for one pattern instead of thousands of strings, and
//! finds who it belongs to.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::rngs::StdRng;

/// One outbox row, as a host app writes it.
#[derive(Debug, Clone)]
pub struct Event {
    pub host: Option<String>,
    pub kind: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    /// A bad event: it must end `invalid` with a reason.
    pub bad: bool,
}

/// What the run knows of one host user.
#[derive(Debug, Clone)]
pub struct HostUser {
    pub id: String,
    pub open: bool,
    /// The email as last written (spacing and letter case as written).
    pub email: String,
    pub name: String,
    /// The email and name before the last change, for the host to go back
    /// to them.
    pub before: Option<(String, String)>,
    /// Times it became open: the most Embedded users it may ever get.
    pub lives: u32,
    /// Holds a username that others use too: never closes nor changes email,
    /// so that who must win that username stays certain.
    pub protected: bool,
    /// Got a bad event: nothing is written for it afterwards, so that the bad
    /// event is the user's newest and must end `invalid`.
    pub frozen: bool,
    /// Every username it ever held.
    pub usernames: BTreeSet<String>,
}

impl HostUser {
    pub fn username(&self) -> String {
        username(&self.email)
    }
}

/// The username the worker must derive: trimmed, lower-cased.
pub fn username(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Who a token of personal data belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Host(String),
    /// A bad event without a host user id, or a user created outside the
    /// worker: nobody's to erase.
    Nobody,
}

/// The whole run's model.
pub struct Model {
    rng: StdRng,
    next_token: u64,
    next_host: u64,
    pub users: BTreeMap<String, HostUser>,
    open: Vec<String>,
    closed: Vec<String>,
    protected: Vec<String>,
    /// Usernames of Embedded users created outside the worker.
    pub outside: BTreeMap<String, Option<String>>,
    /// Token (lower-case) to whom it belongs.
    pub tokens: BTreeMap<String, Owner>,
    /// Changes the host undoes as soon as Embedded holds them, whether or
    /// not the worker has learnt it yet: (host id, new name, ticks left).
    undo_soon: Vec<(String, String, u32)>,
    /// Host ids of bad signups of made-up users: none may get anything.
    pub ghosts: BTreeSet<String>,
    pub counts: BTreeMap<&'static str, u64>,
}

const FIRST: &[&str] = &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia"];
const DOMAINS: &[&str] = &["example.com", "example.org", "example.net"];

impl Model {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rand::SeedableRng::seed_from_u64(seed),
            next_token: 0,
            next_host: 0,
            users: BTreeMap::new(),
            open: Vec::new(),
            closed: Vec::new(),
            protected: Vec::new(),
            outside: BTreeMap::new(),
            tokens: BTreeMap::new(),
            undo_soon: Vec::new(),
            ghosts: BTreeSet::new(),
            counts: BTreeMap::new(),
        }
    }

    fn token(&mut self, owner: Owner) -> String {
        self.next_token += 1;
        let token = format!("q_{:07}_x", self.next_token);
        self.tokens.insert(token.clone(), owner);
        token
    }

    fn new_host_id(&mut self) -> String {
        self.next_host += 1;
        format!("h{:07}", self.next_host)
    }

    fn fresh_email(&mut self, owner: Owner) -> String {
        let first = FIRST[self.rng.random_range(0..FIRST.len())].to_lowercase();
        let domain = DOMAINS[self.rng.random_range(0..DOMAINS.len())];
        let token = self.token(owner);
        format!("{first}.{token}@{domain}")
    }

    fn fresh_name(&mut self, owner: Owner) -> String {
        let first = FIRST[self.rng.random_range(0..FIRST.len())];
        let token = self.token(owner).to_uppercase();
        format!("{first} {token}")
    }

    /// The same email as the host app might write it again: other letter
    /// case, spaces around it.
    fn variant(&mut self, email: &str) -> String {
        let core = username(email);
        let cased: String = core
            .chars()
            .map(|c| {
                if self.rng.random_bool(0.3) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        match self.rng.random_range(0..4) {
            0 => format!("  {cased}"),
            1 => format!("{cased} "),
            _ => cased,
        }
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    fn random_of(&mut self, ids: &[String]) -> Option<String> {
        (!ids.is_empty()).then(|| ids[self.rng.random_range(0..ids.len())].clone())
    }

    /// An open user that may still be written for.
    fn pick_open(&mut self, unprotected: bool) -> Option<String> {
        for _ in 0..8 {
            let id = self.random_of(&self.open.clone())?;
            let user = &self.users[&id];
            if user.frozen || (unprotected && user.protected) {
                continue;
            }
            return Some(id);
        }
        None
    }

    fn set_open(&mut self, id: &str, open: bool) {
        let (from, to) = if open {
            (&mut self.closed, &mut self.open)
        } else {
            (&mut self.open, &mut self.closed)
        };
        if let Some(i) = from.iter().position(|x| x == id) {
            from.swap_remove(i);
        }
        to.push(id.to_owned());
    }

    fn add_user(&mut self, id: String, email: String, name: String, open: bool) {
        let user = HostUser {
            id: id.clone(),
            open,
            usernames: if open {
                BTreeSet::from([username(&email)])
            } else {
                BTreeSet::new()
            },
            email,
            name,
            before: None,
            lives: u32::from(open),
            protected: false,
            frozen: false,
        };
        self.users.insert(id.clone(), user);
        if open {
            self.open.push(id);
        } else {
            self.closed.push(id);
        }
    }

    // -----------------------------------------------------------------
    // Before the worker: users made outside it, historical accounts
    // -----------------------------------------------------------------

    /// Usernames taken in Embedded by users the worker did not create.
    pub fn outside_users(&mut self, n: usize) -> Vec<(String, Option<String>)> {
        (0..n)
            .map(|_| {
                let email = self.fresh_email(Owner::Nobody);
                let name = self.fresh_name(Owner::Nobody);
                self.outside.insert(email.clone(), Some(name.clone()));
                (email, Some(name))
            })
            .collect()
    }

    /// Rows of the host's users table for the backfill: `(id, email, name,
    /// closed)`. A few share an email (in another spelling) with another
    /// account or with an outside user: real conflicts.
    pub fn historical(&mut self, n: usize) -> Vec<(String, String, String, bool)> {
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let id = self.new_host_id();
            let name = self.fresh_name(Owner::Host(id.clone()));
            let closed = self.rng.random_bool(0.05);
            let mut protected = false;
            let email = if i % 50 == 7 && !rows.is_empty() {
                // Another account's email: both keep it for the whole run.
                let (other_id, other_email, _, other_closed): &(String, String, String, bool) =
                    &rows[self.rng.random_range(0..rows.len())];
                if *other_closed {
                    self.fresh_email(Owner::Host(id.clone()))
                } else {
                    let (other_id, other_email) = (other_id.clone(), other_email.clone());
                    if let Some(other) = self.users.get_mut(&other_id) {
                        other.protected = true;
                    }
                    self.protected.push(other_id);
                    protected = true;
                    self.count("historical duplicate emails");
                    self.variant(&other_email)
                }
            } else if i % 50 == 23 && !self.outside.is_empty() {
                let k = self.rng.random_range(0..self.outside.len());
                let taken = self.outside.keys().nth(k).cloned().unwrap_or_default();
                self.count("historical emails taken outside");
                self.variant(&taken)
            } else {
                self.fresh_email(Owner::Host(id.clone()))
            };
            let closed = closed && !protected;
            self.add_user(id.clone(), email.clone(), name.clone(), !closed);
            if protected {
                self.protected.push(id.clone());
                if let Some(user) = self.users.get_mut(&id) {
                    user.protected = true;
                }
            }
            rows.push((id, email, name, closed));
        }
        // Some accounts keep their username all run long, for live
        // signups to collide with.
        for _ in 0..(n / 40).max(2) {
            if let Some(id) = self.pick_open(false) {
                if let Some(user) = self.users.get_mut(&id) {
                    user.protected = true;
                }
                self.protected.push(id);
            }
        }
        rows
    }

    // -----------------------------------------------------------------
    // The live workload
    // -----------------------------------------------------------------

    /// The next outbox event of the live workload, the model updated as if
    /// it were applied.
    pub fn next_event(&mut self) -> Event {
        loop {
            let roll = self.rng.random_range(0..100);
            let event = match roll {
                0..=29 => Some(self.signup()),
                30..=49 => self.name_change(),
                50..=61 => self.email_change(),
                62..=71 => self.closure(),
                72..=79 => self.resignup(),
                80..=83 => self.duplicate_signup(),
                84..=85 => self.rename_into_taken(),
                86..=88 => self.undo(None),
                89..=90 => self.repeat(),
                _ => self.bad_event(),
            };
            if let Some(event) = event {
                return event;
            }
        }
    }

    fn event(&self, host: &str, kind: &str, user: &HostUser) -> Event {
        Event {
            host: Some(host.to_owned()),
            kind: Some(kind.to_owned()),
            email: Some(user.email.clone()),
            name: Some(user.name.clone()),
            bad: false,
        }
    }

    fn signup(&mut self) -> Event {
        let id = self.new_host_id();
        let email = self.fresh_email(Owner::Host(id.clone()));
        let email = self.variant(&email);
        let name = self.fresh_name(Owner::Host(id.clone()));
        self.add_user(id.clone(), email, name, true);
        self.count("signups");
        self.event(&id, "signup", &self.users[&id])
    }

    fn name_change(&mut self) -> Option<Event> {
        let id = self.pick_open(false)?;
        let name = self.fresh_name(Owner::Host(id.clone()));
        let email = self.users[&id].email.clone();
        // The same email, perhaps spelled otherwise: no new username.
        let email = self.variant(&email);
        let user = self.users.get_mut(&id)?;
        user.before = Some((user.email.clone(), user.name.clone()));
        user.name = name;
        user.email = email;
        self.count("name changes");
        if self.rng.random_bool(0.25) {
            let name = self.users[&id].name.clone();
            self.undo_soon.push((id.clone(), name, 30));
        }
        Some(self.event(&id, "profile_change", &self.users[&id]))
    }

    fn email_change(&mut self) -> Option<Event> {
        let id = self.pick_open(true)?;
        let email = self.fresh_email(Owner::Host(id.clone()));
        let email = self.variant(&email);
        let rename_too = self.rng.random_bool(0.5);
        let name = rename_too.then(|| self.fresh_name(Owner::Host(id.clone())));
        let user = self.users.get_mut(&id)?;
        user.before = Some((user.email.clone(), user.name.clone()));
        user.usernames.insert(username(&email));
        user.email = email;
        if let Some(name) = name {
            user.name = name;
        }
        self.count("email changes");
        if rename_too && self.rng.random_bool(0.25) {
            let name = self.users[&id].name.clone();
            self.undo_soon.push((id.clone(), name, 30));
        }
        Some(self.event(&id, "profile_change", &self.users[&id]))
    }

    fn closure(&mut self) -> Option<Event> {
        let id = self.pick_open(true)?;
        self.users.get_mut(&id)?.open = false;
        self.set_open(&id, false);
        self.count("closures");
        Some(Event {
            host: Some(id),
            kind: Some("account_closure".into()),
            email: None,
            name: None,
            bad: false,
        })
    }

    fn resignup(&mut self) -> Option<Event> {
        let id = self.random_of(&self.closed.clone())?;
        let old = self.users[&id].email.clone();
        // Back with the old email or a new one.
        let email = if self.rng.random_bool(0.5) {
            self.variant(&old)
        } else {
            self.fresh_email(Owner::Host(id.clone()))
        };
        let name = self.fresh_name(Owner::Host(id.clone()));
        let user = self.users.get_mut(&id)?;
        user.open = true;
        user.lives += 1;
        user.usernames.insert(username(&email));
        user.email = email;
        user.name = name;
        self.set_open(&id, true);
        self.count("re-signups");
        Some(self.event(&id, "signup", &self.users[&id]))
    }

    /// A new account whose email is already another's: a real conflict.
    fn duplicate_signup(&mut self) -> Option<Event> {
        let taken = self.taken_email()?;
        let id = self.new_host_id();
        let email = self.variant(&taken);
        let name = self.fresh_name(Owner::Host(id.clone()));
        self.add_user(id.clone(), email, name, true);
        self.count("duplicate-email signups");
        Some(self.event(&id, "signup", &self.users[&id]))
    }

    /// An account changes its email to one that is already taken: a real
    /// conflict. Nothing is written for it afterwards, so that the rename
    /// stays its newest event.
    fn rename_into_taken(&mut self) -> Option<Event> {
        let id = self.pick_open(true)?;
        let taken = self.taken_email()?;
        let email = self.variant(&taken);
        let user = self.users.get_mut(&id)?;
        user.usernames.insert(username(&email));
        user.email = email;
        user.frozen = true;
        self.count("renames into a taken email");
        Some(self.event(&id, "profile_change", &self.users[&id]))
    }

    /// The email of an account that keeps it all run long, or of a user
    /// made outside the worker.
    fn taken_email(&mut self) -> Option<String> {
        if self.rng.random_bool(0.7) {
            let holder = self.random_of(&self.protected.clone())?;
            Some(self.users[&holder].email.clone())
        } else {
            let k = self.rng.random_range(0..self.outside.len().max(1));
            self.outside.keys().nth(k).cloned()
        }
    }

    /// Undoes the watched changes that `in_embedded` (a name) says have
    /// reached Embedded; forgets those not seen within their ticks.
    pub fn undos_due(&mut self, in_embedded: impl Fn(&str) -> bool) -> Vec<Event> {
        let watched = std::mem::take(&mut self.undo_soon);
        let mut due = Vec::new();
        for (id, name, left) in watched {
            if self.users[&id].name != name {
                continue;
            }
            if in_embedded(&name) {
                due.extend(self.undo(Some(id)));
            } else if left > 1 {
                self.undo_soon.push((id, name, left - 1));
            }
        }
        due
    }

    /// The host goes back to the email and name from before the last
    /// change, often right after it: an update undone.
    fn undo(&mut self, id: Option<String>) -> Option<Event> {
        let id = match id {
            Some(id) => id,
            None => self.pick_open(true)?,
        };
        let user = self.users.get_mut(&id)?;
        if !user.open || user.frozen || user.protected {
            return None;
        }
        let (email, name) = user.before.take()?;
        user.before = Some((user.email.clone(), user.name.clone()));
        user.email = email;
        user.name = name;
        self.count("changes undone");
        Some(self.event(&id, "profile_change", &self.users[&id]))
    }

    /// The same state written again (a replayed or duplicated event).
    fn repeat(&mut self) -> Option<Event> {
        let id = self.pick_open(false)?;
        self.count("repeated events");
        Some(self.event(&id, "profile_change", &self.users[&id]))
    }

    fn bad_event(&mut self) -> Option<Event> {
        self.count("bad events");
        let which = self.rng.random_range(0..6);
        let event = match which {
            // No host user id.
            0 => Event {
                host: None,
                kind: Some("signup".into()),
                email: Some(self.fresh_email(Owner::Nobody)),
                name: Some(self.fresh_name(Owner::Nobody)),
                bad: true,
            },
            // A made-up account whose email is not one.
            1 => {
                let id = self.new_host_id();
                self.ghosts.insert(id.clone());
                let token = self.token(Owner::Host(id.clone()));
                Event {
                    host: Some(id),
                    kind: Some("signup".into()),
                    email: Some(format!("not-an-email.{token}")),
                    name: None,
                    bad: true,
                }
            }
            // An unknown kind, a missing kind, a bad email or a bad name for
            // an existing account, which keeps what it had.
            _ => {
                let id = self.pick_open(false)?;
                let token = self.token(Owner::Host(id.clone()));
                let user = self.users.get_mut(&id)?;
                user.frozen = true;
                let (kind, email, name) = match which {
                    2 => (Some("upgrade"), user.email.clone(), user.name.clone()),
                    3 => (None, user.email.clone(), user.name.clone()),
                    4 => (
                        Some("profile_change"),
                        format!("{token}.at.example.com"),
                        user.name.clone(),
                    ),
                    _ => (
                        Some("profile_change"),
                        user.email.clone(),
                        format!("Bell\u{7}{token}"),
                    ),
                };
                Event {
                    host: Some(id),
                    kind: kind.map(str::to_owned),
                    email: Some(email),
                    name: Some(name),
                    bad: true,
                }
            }
        };
        Some(event)
    }
}
