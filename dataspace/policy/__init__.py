"""Control: ODRL usage policies, identities and keys, contracts, the privacy-budget ledger."""
