"""The shared modules that the scripts at the repository's top (train.py, classifier.py, plot.py, pictures.py,
predict.py, bench.py) and the experiments import: the network (model.py), the data (dataset.py, cache.py,
decode.py, download.py), the recipe (recipe.py, augment.py, schedule.py), evaluation (evaluate.py, pretrained.py),
run folders (runs.py), devices and ranks (devices.py, distributed.py), the command line (cli.py) and plots
(figures.py). One package, so that no name at the top shadows an installed package. docs/layout.md has the map."""
