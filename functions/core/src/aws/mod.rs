//! The AWS engine's core side: the events the planner, copier, finalizer and rollback Lambdas
//! take and return, the error names the state machine matches, and Step Functions progress.
