"""Policies: the YAML a user writes (extends, when, computed values) and the resolved Policy the tuners consume.

Entry points live in agent.policy.loader (load_policy, list_policies, policy_search_path); the resolved model in
agent.policy.model. This package imports nothing eagerly so `agent.policy.model` stays cheap to import.
"""
