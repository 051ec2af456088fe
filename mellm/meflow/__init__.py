"""A learned micro-expression flow estimator (MEFlowNet-style), trained on generated data.

data.py   onset-apex pairs with exact facial, head and expression flow, written as shards (`mellm flow-data`)
model.py  the network: encoder, per-iteration feature warping, recurrent update, facial and head heads
train.py  its training (`mellm train-flow --config ...`): run directory, resume, TensorBoard, accelerate
backend.py the `meflownet` flow backend that perception uses (`--flow meflownet --flow-checkpoint DIR`)

torch is needed for model/train/backend (the `train` extra); data.py needs only numpy and OpenCV.
"""
