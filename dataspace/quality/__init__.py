"""Quality: expectation suites, dimension scores, value and contribution, reports."""
