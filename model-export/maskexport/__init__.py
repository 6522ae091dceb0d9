"""Train torchvision Mask R-CNN and export it into a maskserve model directory."""
