//! The versions of the API the sandbox serves, all at once over one set of
//! users, and what each asks of a request before its route.

/// A version of the API, by where the sandbox serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// `/users...`, with `x-api-version: 2025-09` required.
    V2025_09,
    /// `/2024-03/users...`, no header.
    V2024_03,
    /// `/2023-12/users...`, no header.
    V2023_12,
    /// `/forge/2021-12/user...` ("Forge"), no header, its own shapes.
    V2021_12,
}

impl Version {
    /// Every version served, newest first.
    pub const ALL: [Version; 4] = [
        Version::V2025_09,
        Version::V2024_03,
        Version::V2023_12,
        Version::V2021_12,
    ];

    /// As the API names it, and as the counters key it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2025_09 => "2025-09",
            Self::V2024_03 => "2024-03",
            Self::V2023_12 => "2023-12",
            Self::V2021_12 => "2021-12",
        }
    }

    /// The version named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// The path the version's routes are nested under (`""` at the root).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::V2025_09 => "",
            Self::V2024_03 => "/2024-03",
            Self::V2023_12 => "/2023-12",
            Self::V2021_12 => "/forge/2021-12",
        }
    }

    /// The collection segment of its user routes: `users`, or Forge's
    /// singular `user`.
    pub(crate) fn collection(self) -> &'static str {
        match self {
            Self::V2021_12 => "user",
            _ => "users",
        }
    }

    /// Whether a request must say its version in `x-api-version` (2025-09),
    /// or must not (the versions in the path).
    pub(crate) fn wants_header(self) -> bool {
        self == Self::V2025_09
    }
}
