# PRNet on the official PyTorch CUDA runtime image.
# The tag's torch version must equal the torch pin in requirements.txt (tests/test_docker.py checks it, and the
# install step below fails the build if the image's torch differs). pytorch/pytorch tags read
# <torch>-cuda<major.minor>-cudnn<major>-runtime.
FROM pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime

# PIP_BREAK_SYSTEM_PACKAGES: recent pytorch/pytorch images use Ubuntu's Python, which refuses system-wide pip
# installs (PEP 668); the image is the environment, so installing into it is what we want.
# TORCH_HOME / HF_HOME: backbone weights are cached under /cache, which entrypoint.sh mounts from the host so
# they are downloaded once, not on every `docker run --rm`.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TORCH_HOME=/cache/torch \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /workspace

# Dependencies in their own layer (cached while only the code changes).
# torch and torchvision are the image's CUDA builds and must not be reinstalled: their lines are dropped from
# requirements.txt (grep -v), and the versions already installed are passed as pip constraints (-c), so no
# other requirement (timm, ...) can pull in a different torch either.
COPY requirements.txt /tmp/requirements.txt
RUN set -eux; \
    want="$(sed -nE 's/^[[:space:]]*torch[[:space:]]*==[[:space:]]*([0-9][0-9.]*).*/\1/p' /tmp/requirements.txt)"; \
    python3 -c "import sys, torch; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '$want' else 'base image has torch ' + v + ', requirements.txt pins torch==$want: change the FROM tag')"; \
    grep -viE '^[[:space:]]*(torch|torchvision)[[:space:]]*([=<>!~;[]|$)' /tmp/requirements.txt > /tmp/requirements-no-torch.txt; \
    python3 -c "import torch, torchvision; print('torch==' + torch.__version__); print('torchvision==' + torchvision.__version__)" > /tmp/torch-constraints.txt; \
    python3 -m pip install -c /tmp/torch-constraints.txt -r /tmp/requirements-no-torch.txt; \
    python3 -c "import torch, torchvision, timm, cv2, sklearn, yaml; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"; \
    rm -f /tmp/requirements.txt /tmp/requirements-no-torch.txt /tmp/torch-constraints.txt; \
    command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python

COPY . .
# entrypoint.sh runs the container as the host user: let it create files under /workspace too (e.g. the demo
# config generates its data under data/; outputs/ and prototypes/ are mounted from the host).
RUN chmod 1777 /workspace

# Default: build the prototypes, then train, with the paper setting (MVTec AD under /data, GPU).
CMD ["sh", "-c", "python create_proto_feature_maps.py --config configs/default.yaml && python train.py --config configs/default.yaml"]
