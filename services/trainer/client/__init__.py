"""The trainer as a client of the rollout and reward services: jobs on the work queue
(`jobs`), the weight push (`weights`), where the services are (`wiring`, from
``TrainerSettings``) and starting them on loopback when they are not given (`local_services`).
"""
