// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.20;

/// @title AuditAnchor: signed-checkpoint roots of several audit logs, one latest anchor per log.
/// @notice Each gateway replica writes its own log, identified by logId = SHA-256(origin string).
///         A log only moves forward: every anchor must name a strictly larger tree size than the
///         last one, and a root anchored once for a log can never be anchored again for it. The
///         full history is the sequence of Anchored events; storage keeps only the latest.
contract AuditAnchor {
    struct Checkpoint {
        uint64 treeSize;
        bytes32 root;
        uint256 blockNumber;
    }

    address public immutable owner;

    mapping(bytes32 logId => Checkpoint) private _latest;
    mapping(bytes32 logId => mapping(bytes32 root => bool)) private _seen;

    event Anchored(bytes32 indexed logId, uint64 indexed treeSize, bytes32 root, uint256 timestamp);

    error NotOwner();
    error NotIncreasing(uint64 last, uint64 given);
    error DuplicateRoot(bytes32 root);

    constructor() {
        owner = msg.sender;
    }

    function anchor(bytes32 logId, uint64 treeSize, bytes32 root) external {
        if (msg.sender != owner) revert NotOwner();
        uint64 last = _latest[logId].treeSize;
        if (treeSize <= last) revert NotIncreasing(last, treeSize);
        if (_seen[logId][root]) revert DuplicateRoot(root);
        _seen[logId][root] = true;
        _latest[logId] = Checkpoint(treeSize, root, block.number);
        emit Anchored(logId, treeSize, root, block.timestamp);
    }

    function latest(bytes32 logId) external view returns (uint64 treeSize, bytes32 root, uint256 blockNumber) {
        Checkpoint storage c = _latest[logId];
        return (c.treeSize, c.root, c.blockNumber);
    }
}
