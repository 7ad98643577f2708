//! File names made from names a user gives (stream names, dataset categories), so that a name
//! can never leave the folder it is written into or trip a shell.

/// `text` with every character other than ASCII letters, digits, `-`, `_` and `.` replaced by
/// `_` (one `_` per character). The result may still be empty or all dots: callers that use it
/// as a whole file name must handle those.
pub fn safe_file_name_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_portable_characters_stay() {
        assert_eq!(safe_file_name_part("line-3_cam.0"), "line-3_cam.0");
        assert_eq!(safe_file_name_part("../etc/passwd"), ".._etc_passwd");
        assert_eq!(safe_file_name_part("caméra 2"), "cam_ra_2");
        assert_eq!(safe_file_name_part(""), "");
    }
}
