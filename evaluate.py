"""Evaluation shared by the scripts: backbone features of cached images, kNN and classification accuracy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import augment
import cli
import dataset

KNN_TEMPERATURE = 0.1  # similarity weighting of the neighbours' votes (Wu et al. 2018, as in common kNN monitors)


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, indices: torch.Tensor, size: int, runtime: cli.Runtime,
          batch_size: int = 512) -> torch.Tensor:
    """(len(indices), 512) float32 features of the evaluation view, backbone in eval mode."""
    was_training = backbone.training
    backbone.eval()
    features = []
    for start in range(0, len(indices), batch_size):
        x = augment.center_view(dataset.gather(images, indices[start:start + batch_size], runtime.device), size)
        with runtime.autocast():
            features.append(backbone(x.contiguous(memory_format=cli.memory_format(runtime.device))).float())
    backbone.train(was_training)
    return torch.cat(features)


@torch.no_grad()
def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 num_classes: int, k: int = 20) -> torch.Tensor:
    """Accuracy (0-dim tensor) of a similarity-weighted vote of each query's k nearest bank features (cosine)."""
    similarity = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T  # (Q, B)
    top_similarity, top_index = similarity.topk(min(k, len(bank)), dim=1)  # (Q, k)
    votes = torch.zeros(len(queries), num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels.to(queries.device)[top_index], (top_similarity / KNN_TEMPERATURE).exp())
    return accuracy(votes, query_labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction (0-dim tensor) of rows whose arg-max is the label."""
    return (logits.argmax(dim=1) == labels.to(logits.device)).float().mean()
