//! The EC2-compatible instance metadata service (IMDSv1 and IMDSv2) that
//! guests reach at 169.254.169.254. Filled in by the metadata work.
