"""Run by tests/test_distributed.py under torchrun: a few generations of each fastes entry point,
then rank 0 writes the final params / states to OUT (torch.save) for comparison across world
sizes. Every collective runs under fastes.distributed's timeout."""

import sys
import time

import torch

import fastes
from fastes import distributed


def sphere(p):
    return -sum(((leaf.float() - 0.3) ** 2).sum() for leaf in fastes.tree.tree_leaves(p))


def main(out: str, what: str) -> None:
    group = distributed.init(timeout_s=60)
    params = {"w": torch.linspace(-1, 1, 12).reshape(3, 4), "b": torch.ones(3)}
    key = fastes.key(11)
    results = {"world_size": 1 if group is None else group.world_size}
    if what in ("all", "core"):
        p = params
        for t in range(4):
            p = fastes.es_step(p, sphere, fastes.fold_in(key, t), population_size=12, sigma=0.1,
                               learning_rate=0.05, noise="philox")  # fmt: skip
        results["es_step"] = p
        for name in sorted(set(fastes.strategies.REGISTRY) - {"eggroll"}):  # eggroll: below
            s = fastes.strategies.make(name, params, population_size=12, sigma=0.3)
            state = s.init(params)
            for t in range(4):
                state, _ = s.step(state, sphere, fastes.fold_in(key, t))
            results[name] = list(fastes.tree.tree_leaves(state))
            # The same generations through ask/tell on this rank's members only.
            state = s.init(params)
            for t in range(4):
                k = fastes.fold_in(key, t)
                members = s.ask(state, k, local=True)
                state = s.tell(state, k, torch.vmap(sphere)(members), local=True)
            results[name + "_ask_tell"] = list(fastes.tree.tree_leaves(state))
        # eggroll's population mode: each rank runs its members' slice of the population.
        layer = torch.nn.Linear(4, 3)
        lp = {"weight": params["w"], "bias": params["b"]}
        xs = torch.linspace(-1, 1, 8).reshape(2, 4)
        pop_fitness = lambda pop: -((pop(xs) - 0.3) ** 2).mean((1, 2))  # noqa: E731
        s = fastes.strategies.make("eggroll", lp, module=layer, rank=2, population_size=12)
        state = s.init(lp)
        for t in range(4):
            state, _ = s.step(state, pop_fitness, fastes.fold_in(key, t))
        results["eggroll"] = list(fastes.tree.tree_leaves(state))
        state = s.init(lp)
        for t in range(4):
            k = fastes.fold_in(key, t)
            state = s.tell(state, k, pop_fitness(s.ask_population(state, k, local=True)),
                           local=True)  # fmt: skip
        results["eggroll_ask_tell"] = list(fastes.tree.tree_leaves(state))
        # ESOptimizer: estimate_grad shards its members too; any torch.optim optimizer steps.
        model = torch.nn.Linear(4, 2)
        with torch.no_grad():
            model.weight.copy_(torch.linspace(-1, 1, 8).reshape(2, 4))
            model.bias.zero_()
        x, y = torch.linspace(-1, 1, 16).reshape(4, 4), torch.tensor([0, 1, 1, 0])
        es = fastes.ESOptimizer(
            model, torch.optim.SGD(model.parameters(), lr=0.1),
            lambda net, x, y: -torch.nn.functional.cross_entropy(net(x), y),
            population_size=12, sigma=0.1, seed=5,
        )  # fmt: skip
        for _ in range(3):
            es.step(x, y)
        results["es_optimizer"] = [p.detach().clone() for p in model.parameters()]
    if what == "partial":  # one es_step with the partial-sum exchange; and its traffic
        distributed.reset_traffic()
        results["partial"] = fastes.es_step(
            params, sphere, key, population_size=16, sigma=0.1, learning_rate=0.05,
            noise="philox", exchange="partial_sums",
        )  # fmt: skip
        results["traffic"] = distributed.traffic()
        # exchange="auto": the cheaper exchange by measured costs, the same choice on every rank
        # (a regeneration made slow or free by hand decides it both ways).
        slow = distributed.choose_exchange(8, 15, lambda n: time.sleep(0.002 * n), "slow")
        free = distributed.choose_exchange(8, 15, lambda n: None, "free")
        results["choices"] = [slow, free]
        results["auto"] = fastes.es_step(
            params, sphere, key, population_size=16, sigma=0.1, learning_rate=0.05,
            noise="philox", exchange="auto",
        )  # fmt: skip
        results["auto_choice"] = [v for k, v in distributed._EXCHANGE_CHOICES.items()
                                  if k[3] == "PhiloxNoise"]  # fmt: skip
        distributed.check_consistent("the auto exchange's params", results["auto"])
    if what in ("skew", "skew_sync"):
        # Rank r's replica rounds its update a little differently (+ r·1e-6), as a GPU rank's
        # would beside CPU ranks. Unsynced, the state check (every 4 generations) must catch
        # it; with sync_state every rank continues from rank 0's state.
        rank = 0 if group is None else group.rank
        sgd = fastes.optim.sgd(0.05)

        def skewed_update(g, state, params=None):
            updates, state = sgd.update(g, state, params)
            return updates + rank * 1e-6, state

        opt = fastes.optim.GradientTransformation(sgd.init, skewed_update)
        s = fastes.strategies.make("openai_es", params, population_size=12, optimizer=opt)
        trainer = fastes.Trainer(s, sphere, key=key, generations=12, params=params,
                                 progress=False, check_every=4,
                                 sync_state=what == "skew_sync")  # fmt: skip
        distributed.reset_traffic()
        trainer.run()
        results["skew"] = list(fastes.tree.tree_leaves(trainer.state))
        results["traffic"] = distributed.traffic()
    if what == "mismatch":  # rank 1 asks for another population: the Trainer must refuse
        P = 8 + 4 * group.rank
        s = fastes.strategies.make("openai_es", params, population_size=P)
        fastes.Trainer(s, sphere, key=key, generations=2, params=params, progress=False).run()
    if distributed.is_main():
        torch.save(results, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "all")
