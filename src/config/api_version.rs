//! `embedded.api_version`: the versions of the Embedded Users API the worker
//! can speak, and where each is served by default.
//!
//! The version is parsed once, here: past the settings, an [`ApiVersion`]
//! is one the client has an adapter for (`embedded::dialect_for` is total).
//! What each version spells differently lives in its adapter, not here.

use std::fmt;

/// A version of the Embedded Users API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    /// Today's: no version in the path, an `x-api-version` header.
    V2025_09,
    /// The version in the path (`/2024-03/users`), the shapes of 2025-09.
    V2024_03,
    /// The version in the path (`/2023-12/users`), the shapes of 2025-09.
    V2023_12,
    /// "Forge": `/forge/2021-12/user`, users named by their email, no
    /// lookup by email, no batch create, no workflow-logs call.
    V2021_12,
}

impl ApiVersion {
    /// Every supported version, newest first; the first is the default.
    pub const ALL: [ApiVersion; 4] = [
        ApiVersion::V2025_09,
        ApiVersion::V2024_03,
        ApiVersion::V2023_12,
        ApiVersion::V2021_12,
    ];

    /// As configured and as the API names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2025_09 => "2025-09",
            Self::V2024_03 => "2024-03",
            Self::V2023_12 => "2023-12",
            Self::V2021_12 => "2021-12",
        }
    }

    /// The version named `text` (blanks around it ignored).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text.trim())
    }

    /// The supported versions, as a list for a message.
    pub fn supported() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    /// Where the documentation serves this version: scheme and host only,
    /// the client adds the version's path.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::V2025_09 => "https://production.runalloy.com",
            Self::V2024_03 | Self::V2023_12 => "https://embedded.runalloy.com",
            Self::V2021_12 => "https://api.runalloy.com",
        }
    }
}

impl Default for ApiVersion {
    fn default() -> Self {
        Self::ALL[0]
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_back_what_they_write() {
        for version in ApiVersion::ALL {
            assert_eq!(ApiVersion::parse(version.as_str()), Some(version));
            assert!(version.default_base_url().starts_with("https://"));
        }
        assert_eq!(ApiVersion::parse(" 2021-12 "), Some(ApiVersion::V2021_12));
        assert_eq!(ApiVersion::parse("2022-01"), None);
        assert_eq!(ApiVersion::default(), ApiVersion::V2025_09);
        assert_eq!(
            ApiVersion::supported(),
            "2025-09, 2024-03, 2023-12, 2021-12"
        );
    }
}
