//! Size-based rotation of a unit's log file as plain decisions: when to rotate, and the renames.

/// One step of a rotation, done in order within the log file's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Remove this name if it is there (the oldest rotated file, beyond `keep`).
    Remove(String),
    /// Rename `from` to `to` if `from` is there, replacing `to`.
    Rename { from: String, to: String },
    /// Write `from` gzip-compressed as `to`, then remove `from`.
    Compress { from: String, to: String },
}

/// Whether a file of `size` bytes must be rotated before `incoming` more are appended: a file
/// never exceeds `max` by more than the one line that alone is longer than `max`.
pub fn must_rotate(size: u64, incoming: u64, max: u64) -> bool {
    size > 0 && size.saturating_add(incoming) > max
}

/// The name of rotated file number `n` (1 is the newest) of `base`: `app.log.1`, or
/// `app.log.1.gz` when rotated files are compressed.
pub fn rotated_name(base: &str, n: u32, compress: bool) -> String {
    if compress {
        format!("{base}.{n}.gz")
    } else {
        format!("{base}.{n}")
    }
}

/// The steps that turn `base` (already closed by the writer) into rotated file 1, keeping at
/// most `keep` rotated files; with `keep` 0 the old file is removed. The writer then creates a
/// new `base`.
pub fn steps(base: &str, keep: u32, compress: bool) -> Vec<Step> {
    if keep == 0 {
        return vec![Step::Remove(base.to_owned())];
    }
    let mut out = vec![Step::Remove(rotated_name(base, keep, compress))];
    for n in (1..keep).rev() {
        out.push(Step::Rename {
            from: rotated_name(base, n, compress),
            to: rotated_name(base, n + 1, compress),
        });
    }
    let first = rotated_name(base, 1, false);
    out.push(Step::Rename {
        from: base.to_owned(),
        to: first.clone(),
    });
    if compress {
        out.push(Step::Compress {
            from: first,
            to: rotated_name(base, 1, true),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_rotates_before_the_line_that_would_take_it_past_max_size() {
        #[rustfmt::skip]
        let rows = [
            // size, incoming, max, rotate
            (0, 10, 100, false),
            (90, 10, 100, false),
            (91, 10, 100, true),
            // A line longer than max-size goes alone into a fresh file.
            (0, 500, 100, false),
            (1, 500, 100, true),
            (u64::MAX, 1, 100, true),
        ];
        for (size, incoming, max, want) in rows {
            assert_eq!(
                must_rotate(size, incoming, max),
                want,
                "{size} + {incoming} vs {max}"
            );
        }
    }

    fn rename(from: &str, to: &str) -> Step {
        Step::Rename {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn rotation_shifts_the_rotated_files_and_drops_the_oldest() {
        assert_eq!(
            steps("app.log", 3, false),
            vec![
                Step::Remove("app.log.3".into()),
                rename("app.log.2", "app.log.3"),
                rename("app.log.1", "app.log.2"),
                rename("app.log", "app.log.1"),
            ]
        );
        assert_eq!(
            steps("app.log", 1, false),
            vec![
                Step::Remove("app.log.1".into()),
                rename("app.log", "app.log.1")
            ]
        );
        assert_eq!(
            steps("app.log", 0, true),
            vec![Step::Remove("app.log".into())]
        );
    }

    #[test]
    fn compressed_rotation_shifts_gz_names_and_compresses_the_newest() {
        assert_eq!(
            steps("web.log", 2, true),
            vec![
                Step::Remove("web.log.2.gz".into()),
                rename("web.log.1.gz", "web.log.2.gz"),
                rename("web.log", "web.log.1"),
                Step::Compress {
                    from: "web.log.1".into(),
                    to: "web.log.1.gz".into()
                },
            ]
        );
    }
}
