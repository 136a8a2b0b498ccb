"""Proposers turn a member head into candidate train.py sources.

mutate (built in), agent (a user command in a worktree), inbox (refs and patch files)."""
