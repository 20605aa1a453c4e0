#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore

/// One client connection: parses requests as bytes arrive, runs them one batch at a time in
/// request order, writes the replies of a batch and flushes once.
///
/// Bounds: at most `maxPendingCommands` parsed commands / `maxPendingBytes` of them wait; beyond
/// that the handler stops parsing and holds back `read()`, so TCP pushes back on the client. No
/// new batch starts while the channel is not writable, so a client that does not read its
/// replies cannot make us buffer them; except while the commands waiting fill the queue (a
/// client that writes its whole pipeline before reading: redis-py, Jedis), up to
/// `maxQueuedReplyBytes`, which Redis buffers without a bound (`mayAnswer`).
///
/// The value of a large `SET key value` goes straight into the backend's storage as it arrives
/// (`KVBackend.stageValue`), not into the receive buffer: what NIO has read of it is copied
/// there, and the rest is read from the socket straight into the storage (`receiveDirectly`),
/// one copy per byte as Redis's, and no fresh buffer of the value's size to fault in. After such
/// a SET, NIO reads the next command's start only (`RESPReceiveAllocator.boundaryBytes`), so that
/// a client sending large values one after another has nearly all of each received directly.
final class RESPConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Pending {
        /// `staged`: argument 2 (an empty placeholder) was received into the backend's storage.
        case command([ByteBuffer], bytes: Int, staged: (any KVStagedValue)?)
        case protocolError(RESPProtocolError)
    }

    private let handler: RESPCommandHandler
    private let configuration: RESPServerConfiguration
    private let logger: Logger
    private var session: RESPSession?
    private var parser: RESPParser
    private var inbound = ByteBuffer()
    /// The value of the SET being parsed, filling as its bytes arrive (they bypass `inbound`).
    private var staging: (any KVStagedValue)? {
        didSet { direct?.on = staging != nil }
    }
    /// Tells the connection's receive allocator (`RESPReceiveAllocator`) to read small while a
    /// value is received directly; nil where the channel has another allocator.
    private let direct: DirectReceiveSwitch?
    /// ...and once complete, until the parser yields its command.
    private var staged: (any KVStagedValue)?
    /// The last command parsed was a SET with a staged value.
    private var lastStaged = false
    private var pending = CircularBuffer<Pending>()
    private var pendingBytes = 0
    private var busy = false
    private var readHeld = false
    /// After QUIT or a protocol error: nothing more is parsed or run.
    private var closing = false
    private var inputClosed = false
    private var active = false
    /// The channel's socket, looked up once (NIO's lookup casts to a generic protocol type,
    /// which costs as much as copying a 64 KiB value); `socket(context)` hands it out only while
    /// the channel is open, on its loop, where NIO cannot close it under us.
    private var descriptor: NIOBSDSocket.Handle??
    /// Writes handed to the channel and not yet done (written to the socket, or failed): while
    /// any is, nothing may go to the socket directly, or it would overtake them.
    private var queuedWrites = 0
    /// Bytes of those writes: replies the client has not taken yet. Batches go on while the
    /// channel is not writable until this reaches `maxQueuedReplyBytes`.
    private var queuedBytes = 0
    /// When a write of ours last completed (the client took replies), or the connection opened.
    private var lastTaken = NIODeadline.now()
    /// Armed while the connection can neither read (its command queue is full) nor answer (the
    /// replies waiting reached `maxQueuedReplyBytes`): if the client takes none of them before
    /// it fires, the connection is closed (`watchStall`).
    private var stallWatch: Scheduled<Void>?
    /// How long a connection may stay so stalled. (The client then gets a closed connection, an
    /// error it can see, where it would have waited for ever.)
    static let stallLimit = TimeAmount.seconds(10)
    /// The reply buffer of the last batch, empty, when it went straight to the socket: the next
    /// batch writes into it rather than into a new one.
    private var spareReplies: ByteBuffer?
    /// `readOncePerWakeup`: whether NIO is set to one read per readiness, and its count before.
    private var readingOnce = false
    private var defaultReadsPerWakeup: UInt?
    private static let spareRepliesCapacity = 16 << 10
    /// SO_SNDBUF as last asked of this connection's socket; nil: the kernel autotunes it, and
    /// it is left alone. Raised to hold the largest reply (`fitSendBuffer`).
    private var sendBuffer: Int?

    init(handler: RESPCommandHandler, configuration: RESPServerConfiguration, logger: Logger,
         direct: DirectReceiveSwitch? = nil)
    {
        self.handler = handler
        self.direct = direct
        self.configuration = configuration
        self.logger = logger
        self.parser = RESPParser(mode: .server, limits: configuration.parserLimits)
        self.sendBuffer = configuration.sendBufferBytes
    }

    private var full: Bool {
        pending.count >= configuration.maxPendingCommands || pendingBytes >= configuration.maxPendingBytes
    }

    /// Before AUTH, commands are parsed one at a time (`parseAvailable`): past this much unparsed
    /// input, more than the largest request the unauthenticated limits let through, the
    /// connection stops reading until it has caught up.
    private var unauthenticatedBacklog: Bool {
        session?.isAuthenticated == false && inbound.readableBytes > Self.unauthenticatedBacklogBytes
    }
    private static let unauthenticatedBacklogBytes = 256 << 10

    func channelActive(context: ChannelHandlerContext) {
        active = true
        let id = handler.stats.connectionOpened()
        session = handler.makeSession(clientID: id)
        if handler.stats.connectedClients > configuration.maxConnections {
            closing = true
            var out = context.channel.allocator.buffer(capacity: 64)
            RESPEncoder.encode(.error("ERR max number of clients reached"), into: &out)
            context.writeAndFlush(wrapOutboundOut(out)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if active { handler.stats.connectionClosed() }
        active = false
        stallWatch?.cancel()
        stallWatch = nil
        totalWatch?.cancel()
        totalWatch = nil
        dropPending()
        pendingBytes = 0
        inbound = ByteBuffer()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        var bytes = unwrapInboundIn(data)
        if let sink = staging {
            let taken = bytes.withUnsafeReadableBytes { sink.append($0) }
            bytes.moveReaderIndex(forwardBy: taken)
            if sink.isComplete {
                stagingDone()
            } else if bytes.readableBytes > 0 {
                stagedValueRefusedBytes(context: context)
                return
            }
        }
        if bytes.readableBytes == 0 {
            // nothing for the parser (and NIO may reuse the read buffer)
        } else if inbound.readableBytes == 0 {
            inbound = bytes
        } else {
            inbound.writeBuffer(&bytes)
        }
        parseAvailable()
        var rounds = 0
        while staging != nil, rounds < Self.directRoundsPerRead, receiveDirectly(context: context) {
            rounds += 1
            parseAvailable()
        }
        runNextBatch(context: context)
        readOncePerWakeup(direct?.atLargeSetBoundary == true, context: context)
    }

    /// How many reads NIO makes per readiness: one while the next read is a large SET's small
    /// boundary read, else NIO's default. NIO reads again after a read that filled its buffer,
    /// and the boundary read fills it; but by then the handler has read the rest of the value
    /// from the socket itself, so that second read only heard EAGAIN (0.43 per 64 KiB SET under
    /// redis-benchmark, `strace -c`). While a large value is still coming, the further reads
    /// catch what arrived meanwhile without a trip through epoll (1 MiB SETs: one read per
    /// readiness cost 14 % more CPU). (NIO takes the count when its loop starts: set for the next.)
    private func readOncePerWakeup(_ once: Bool, context: ChannelHandlerContext) {
        guard once != readingOnce, let options = context.channel.syncOptions else { return }
        if defaultReadsPerWakeup == nil { defaultReadsPerWakeup = try? options.getOption(ChannelOptions.maxMessagesPerRead) }
        guard let usual = defaultReadsPerWakeup else { return }
        guard (try? options.setOption(ChannelOptions.maxMessagesPerRead, value: once ? 1 : usual)) != nil else { return }
        readingOnce = once
    }

    /// Reads the rest of the value being staged from the socket straight into its storage, and up
    /// to `lookaheadBytes` after it into `inbound` (its CRLF, and the start of what a pipelining
    /// client sent next), in one `readv`: the value is then complete, or the socket had no more
    /// for now (no second read to hear EAGAIN: NIO's next read, when more comes, leads here
    /// again). What comes after the look-ahead stays in the socket for NIO to read (its readiness
    /// is level-triggered), unless the look-ahead holds the start of another large SET, which the
    /// parser then stages in turn. A value stored in several parts offers one part's room at a
    /// time: the look-ahead then holds the next part's start, which goes to the value, and while
    /// a `readv` fills both, the next part is read the same way. True when the value is now
    /// complete. Only while the channel is reading (called from `channelRead`), so a connection
    /// held back by a full queue is not read here either.
    private func receiveDirectly(context: ChannelHandlerContext) -> Bool {
        // While a value is staged, every byte that arrives goes to it first: `inbound` is empty.
        guard direct != nil, let sink = staging, !closing, inbound.readableBytes == 0 else { return false }
        guard let socket = socket(context) else {
            direct?.on = false   // not a socket after all: NIO reads as usual
            return false
        }
        var failure: Int32 = 0
        var received = 0
        while true {
            inbound.clear()
            inbound.reserveCapacity(minimumWritableBytes: Self.lookaheadBytes)
            var error: Int32 = 0
            var after = 0, offered = 0
            let count = sink.receive { slot in
                inbound.withUnsafeMutableWritableBytes { ahead in
                    offered = slot.count + ahead.count
                    var vectors = (iovec(iov_base: slot.baseAddress, iov_len: slot.count),
                                   iovec(iov_base: ahead.baseAddress, iov_len: ahead.count))
                    let count = withUnsafeMutableBytes(of: &vectors) { vectors in
                        readv(socket, vectors.baseAddress!.assumingMemoryBound(to: iovec.self), 2)
                    }
                    if count < 0 {
                        error = errno
                        return count
                    }
                    after = max(0, count - slot.count)
                    return min(count, slot.count)
                }
            }
            // 0: the client closed (NIO's next read finds that).
            if count < 0, error == EINTR { continue }
            if count < 0, error != EAGAIN, error != EWOULDBLOCK { failure = error }
            guard count > 0 else { break }
            received += count
            inbound.moveWriterIndex(forwardBy: after)
            guard after > 0, !sink.isComplete else { break }
            // The slot was one part of the value and is full; the look-ahead holds more of it.
            let taken = inbound.withUnsafeReadableBytes { sink.append($0) }
            inbound.moveReaderIndex(forwardBy: taken)
            // Another part to fill, and the socket may hold more: it filled all that was offered.
            guard !sink.isComplete, inbound.readableBytes == 0, count + after == offered else { break }
        }
        if received > 0 { handler.stats.receivedDirectly(bytes: received) }
        if failure == 0, !sink.isComplete, inbound.readableBytes > 0 {
            stagedValueRefusedBytes(context: context)
            return false
        }
        if failure != 0 {
            logger.debug("RESP connection read failed", metadata: ["errno": "\(failure)"])
            abandon(context: context)
            return false
        }
        guard sink.isComplete else { return false }
        stagingDone()
        return true
    }

    /// The staged value took less than it lacks: its storage was taken away (the store is going).
    /// What came is neither the value nor a command: the connection goes.
    private func stagedValueRefusedBytes(context: ChannelHandlerContext) {
        logger.debug("RESP staged value refused bytes; closing the connection")
        abandon(context: context)
    }

    /// Closes the connection now, answering nothing more and dropping what waits.
    private func abandon(context: ChannelHandlerContext) {
        closing = true
        dropPending()
        context.close(promise: nil)
    }

    /// What `receiveDirectly` reads past a value: its CRLF, and a pipelined next command's header
    /// and the start of its value.
    private static let lookaheadBytes = 4096
    /// How many staged values one `channelRead` receives one after another (a client pipelining
    /// large SETs), before NIO's loop serves the other connections.
    private static let directRoundsPerRead = 16

    /// The socket, while the channel is open; nil where the channel has none (or is closed).
    private func socket(_ context: ChannelHandlerContext) -> NIOBSDSocket.Handle? {
        DirectSocketWrite.socket(of: context.channel, cache: &descriptor)
    }

    func read(context: ChannelHandlerContext) {
        if full || closing || unauthenticatedBacklog {
            readHeld = true
        } else {
            context.read()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // The client half-closed (e.g. `nc -q`): answer what it sent, then close.
            inputClosed = true
            runNextBatch(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        runNextBatch(context: context)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("RESP connection error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// `POST` or `Host:` as a command's name (either case), as an HTTP request sends them.
    /// Compared in place, as `RESPCommandHandler.getOrSet` does: it runs for every command.
    static func isHTTP(_ name: ByteBuffer) -> Bool {
        let word: StaticString
        switch name.readableBytes {
        case 4: word = "post"
        case 5: word = "host:"
        default: return false
        }
        return name.withUnsafeReadableBytes { bytes in
            (0..<bytes.count).allSatisfy { bytes[$0] | 0x20 == word.utf8Start[$0] }
        }
    }

    /// Moves complete requests from `inbound` to `pending` until it is full.
    private func parseAvailable() {
        var producedSlices = false
        while !closing && !full {
            if session?.isAuthenticated == false {
                // Before AUTH (a password is required), one command at a time, each parsed under
                // Redis's small limits for unauthenticated clients (`forUnauthenticated`) once the
                // one before it has run: a pipelined AUTH then a large SET is read as in Redis.
                guard pending.isEmpty && !busy else { break }
                if !parser.limits.unauthenticated { parser.limits = configuration.parserLimits.forUnauthenticated }
            } else if parser.limits.unauthenticated {
                parser.limits = configuration.parserLimits
            }
            do throws(RESPProtocolError) {
                guard let arguments = try parser.nextRequest(from: &inbound) else {
                    if staging == nil, staged == nil, startStaging() { continue }
                    break
                }
                if let name = arguments.first, Self.isHTTP(name) {
                    logger.warning("closing a RESP connection that sent an HTTP request (a web page posting to this port?)")
                    throw RESPProtocolError.looksLikeHTTP
                }
                var bytes = 0
                for argument in arguments { bytes += argument.readableBytes + 16 }
                let staged = self.staged
                self.staged = nil
                bytes += staged?.length ?? 0
                lastStaged = staged != nil
                pending.append(.command(arguments, bytes: bytes, staged: staged))
                pendingBytes += bytes
                producedSlices = true
            } catch {
                handler.stats.protocolErrorSeen()
                pending.append(.protocolError(error))
                closing = true
                inbound = ByteBuffer()
                discardStaging()
                return
            }
        }
        if inbound.readableBytes == 0 {
            inbound = ByteBuffer()
        } else if producedSlices {
            // Slices we handed out share `inbound`'s storage; start a fresh buffer for the
            // remainder so that appending to it does not copy the whole storage.
            inbound = ByteBuffer(bytes: inbound.readableBytesView)
        }
        direct?.atLargeSetBoundary = lastStaged && staging == nil && inbound.readableBytes == 0
        if staging == nil, let needed = parser.minimumBytesStillNeeded(in: inbound), needed > 0 {
            // A bulk header announced `needed` more bytes (already checked against the limit).
            inbound.reserveCapacity(minimumWritableBytes: needed)
        }
    }

    /// When the parser waits for the value of `SET key value ...` and it is large, asks the
    /// backend for room to receive it in place and moves there what `inbound` already holds of
    /// it. True when the value is now complete (the parser goes on past it); false when more of
    /// it must arrive (`staging`) or it is not staged.
    private func startStaging() -> Bool {
        guard let awaited = parser.awaitedBulk, awaited.index == 2, awaited.length >= configuration.minStagedValueBytes,
            session?.isAuthenticated == true,
            case .bulkString(let name) = awaited.earlier[0], RESPCommandHandler.getOrSet(name)?.name == "set",
            let sink = handler.backend.stageValue(length: awaited.length)
        else { return false }
        handler.stats.valueStaged()
        let taken = inbound.withUnsafeReadableBytes { sink.append($0) }
        inbound.moveReaderIndex(forwardBy: taken)
        staging = sink
        if sink.isComplete {
            stagingDone()
            return true
        }
        return false
    }

    /// The staged value has all its bytes: the parser skips its payload.
    private func stagingDone() {
        staged = staging
        staging = nil
        parser.divertAwaitedBulk()
    }

    private func discardStaging() {
        staging?.discard()
        staged?.discard()
        staging = nil
        staged = nil
    }

    /// Forgets every waiting command (the connection is closing), giving back staged values.
    private func dropPending() {
        for case .command(_, _, let staged?) in pending { staged.discard() }
        pending.removeAll()
        discardStaging()
    }

    private func runNextBatch(context: ChannelHandlerContext) {
        while true {
            // Checked on every pass: a flush below can call back into this handler (writability
            // changes fire during it) and start a batch, after which nothing may be answered
            // here until that batch is done, or replies would overtake it.
            guard active, !busy else { return }
            if pending.isEmpty {
                if inputClosed || closing { context.close(promise: nil) }
                return
            }
            guard mayAnswer(context) else {
                if full {
                    watchStall(context: context)
                    if queuedBytes < configuration.maxQueuedReplyBytes { watchTotal(context: context) }
                }
                return
            }
            let outcome = runImmediately(context: context)
            if outcome == .closed { return }
            if outcome == .noneAnswered { break }
            parseAvailable()
            if readHeld && !full && !closing {
                readHeld = false
                context.read()
            }
        }
        guard active, !busy, !pending.isEmpty else { return }
        var commands: [(arguments: [ByteBuffer], staged: (any KVStagedValue)?)] = []
        var batchBytes = 0
        var protocolError: RESPProtocolError?
        // While the client is not taking its replies, one command at a time: a batch's replies
        // are queued whole, and 128 GETs of large values would go far past `maxQueuedReplyBytes`.
        let batchLimit = context.channel.isWritable ? configuration.maxBatchCommands : 1
        while commands.count < batchLimit, let next = pending.popFirst() {
            switch next {
            case .command(let arguments, let bytes, let staged):
                commands.append((arguments, staged))
                batchBytes += bytes
            case .protocolError(let error):
                protocolError = error
            }
            if protocolError != nil { break }
        }
        busy = true
        let handler = self.handler
        let session = self.session!
        let promise = context.eventLoop.makePromise(of: ([RESPReply], RESPSession).self)
        promise.completeWithTask { [commands] in
            var session = session
            let replies = await handler.handle(batch: commands, session: &session)
            for command in commands { command.staged?.discard() }
            return (replies, session)
        }
        promise.futureResult.assumeIsolated().whenComplete { result in
            // `completeWithTask` only fails if the task throws, and it does not.
            guard case .success(let (replies, session)) = result else { return }
            self.finishBatch(context: context, replies: replies, session: session, bytes: batchBytes, protocolError: protocolError)
        }
    }

    /// Answers the commands at the front of the queue that need no waiting, on this event loop,
    /// in order, with one flush; stops at the first that must wait.
    private func runImmediately(context: ChannelHandlerContext) -> ImmediateOutcome {
        var out = spareReplies.take() ?? context.channel.allocator.buffer(capacity: 256)
        var answered = 0
        var closeAfter = false
        // A GET's value goes out from where the backend holds it, where the channel is a socket.
        let canWriteBulk = direct != nil
        let handler = self.handler   // (copied once a batch, not once a command)
        while answered < configuration.maxBatchCommands, let next = pending.first,
            case .command(let arguments, let bytes, let staged) = next, mayAnswer(context, unsent: out.readableBytes) || answered == 0
        {
            guard let reply = handler.handleImmediately(arguments, staged: staged, session: &session!, canWriteBulk: canWriteBulk, {
                value in self.writeBulk(value, after: &out, context: context)
            })
            else { break }
            staged?.discard()
            pending.removeFirst()
            pendingBytes -= bytes
            answered += 1
            if !reply.alreadyWritten { encode(reply, into: &out, context: context) }
            if reply.closesConnection {
                closeAfter = true
                break
            }
        }
        guard answered > 0 else {
            spareReplies = out   // (nothing was written into it)
            return .noneAnswered
        }
        if closeAfter {
            closing = true
            dropPending()
            context.writeAndFlush(wrapOutboundOut(out)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return .closed
        }
        send(&out, context: context)
        // Written straight to the socket, so not shared with the channel: kept for the next batch
        // (unless a batch of large replies grew it: a connection does not hold on to that).
        if out.readableBytes == 0, out.capacity <= Self.spareRepliesCapacity { spareReplies = out }
        return .answered
    }

    /// Sends the replies in `out`, in order after everything before them: straight to the socket
    /// with one `write` when nothing waits in the channel (none of NIO's write path for the
    /// usual small reply, `writeNow`), else through the channel.
    private func send(_ out: inout ByteBuffer, context: ChannelHandlerContext) {
        if queuedWrites == 0, out.readableBytes == 0 { return }   // (all went out in writeBulk)
        if queuedWrites == 0, let socket = socket(context) {
            let all = out.withUnsafeReadableBytes { writeNow($0, to: socket, context: context) }
            out.clear()
            if all { return }
        }
        if out.readableBytes > 0 { enqueue(out, context: context) }
        context.flush()
    }

    /// Writes the pieces, in order, straight to the socket with one `writev`; whatever the socket
    /// does not take (its buffer is full, or the write failed) is copied for the channel to
    /// write after it, and meets the same fate there (EAGAIN: written when the socket drains; an
    /// error: the channel closes). Only while nothing waits in the channel (`queuedWrites` is 0),
    /// which the pieces would overtake. True when the socket took them all.
    private func writeNow(
        _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        _ third: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        to socket: NIOBSDSocket.Handle, context: ChannelHandlerContext
    ) -> Bool {
        let total = first.count + second.count + third.count
        let written = DirectSocketWrite.writev(first, second, third, to: socket)
        if written == total { return true }
        // The rest, in order: what is left of each piece.
        var rest = context.channel.allocator.buffer(capacity: total - written)
        var skip = written
        for piece in [first, second, third] {
            if skip < piece.count { rest.writeBytes(UnsafeRawBufferPointer(rebasing: piece[skip...])) }
            skip = max(0, skip - piece.count)
        }
        enqueue(rest, context: context)
        return false
    }

    /// Raises the socket's send buffer (SO_SNDBUF, which the kernel doubles and caps at
    /// `net.core.wmem_max`) to `bytes` when a reply's value is larger than it, so that the socket
    /// takes the reply in one write. A fixed small buffer keeps pipelined replies from running far
    /// ahead of a client (see `RESPServerConfiguration.sendBufferBytes`), but cut each 1 MiB GET
    /// into four or five writes, most of it copied once more to wait in the channel, with a wait
    /// for the client between them: 1.6 times the server CPU of the same GETs with the buffer
    /// autotuned (docs/BENCHMARKS.md, session 24). It only grows, once per larger value. With
    /// TCP_NOTSENT_LOWAT set (`RESPServerConfiguration.notSentLowWaterBytes`) the socket takes
    /// only what the client's window lets TCP send plus that limit; the raised buffer still lets
    /// that much be in flight.
    private func fitSendBuffer(_ bytes: Int, socket: NIOBSDSocket.Handle) {
        guard let current = sendBuffer, bytes > current else { return }
        var value = CInt(clamping: bytes)
        _ = setsockopt(socket, SOL_SOCKET, SO_SNDBUF, &value, socklen_t(MemoryLayout<CInt>.size))
        sendBuffer = bytes
        handler.stats.sendBufferRaised()
    }

    /// Hands `buffer` to the channel to write after what it holds, counted in `queuedWrites`
    /// until done.
    private func enqueue(_ buffer: ByteBuffer, context: ChannelHandlerContext) {
        let bytes = buffer.readableBytes
        queuedWrites += 1
        queuedBytes += bytes
        handler.stats.repliesQueued(bytes: bytes)
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenComplete { _ in
            self.queuedWrites -= 1
            self.queuedBytes -= bytes
            self.lastTaken = .now()
            self.handler.stats.repliesWritten(bytes: bytes)
        }
        context.write(wrapOutboundOut(buffer), promise: promise)
    }

    /// Whether another batch may be answered now: while the channel is writable; or while our
    /// queue of commands is full, and so reading is held, as long as the replies waiting for the
    /// client stay under `maxQueuedReplyBytes` (Redis answers into its reply buffer without a
    /// bound). A client that writes a whole pipeline before it reads a reply (redis-py, Jedis,
    /// hiredis) would otherwise deadlock with us once its requests outgrow the socket buffers:
    /// we would stop reading, it would not read until it had written them all. (A client that
    /// reads, as redis-benchmark does, waits for writability as before: replies do not pile up.)
    /// So do the replies waiting on all connections together, under `maxTotalQueuedReplyBytes`.
    /// `unsent`: replies of the pass under way, not yet handed to the channel.
    private func mayAnswer(_ context: ChannelHandlerContext, unsent: Int = 0) -> Bool {
        context.channel.isWritable
            || (full && queuedBytes + unsent < configuration.maxQueuedReplyBytes && !overTotal(unsent: unsent))
    }

    private func overTotal(unsent: Int = 0) -> Bool {
        handler.stats.queuedReplyBytes + unsent >= configuration.maxTotalQueuedReplyBytes
    }

    /// Set while a look is scheduled for a connection held by the other connections' replies
    /// (`overTotal`): nothing of its own changes when they are taken, so it looks again shortly.
    private var totalWatch: Scheduled<Void>?
    static let totalRecheck = TimeAmount.milliseconds(20)

    private func watchTotal(context: ChannelHandlerContext) {
        guard totalWatch == nil else { return }
        totalWatch = context.eventLoop.assumeIsolated().scheduleTask(in: Self.totalRecheck) { [self] in
            totalWatch = nil
            runNextBatch(context: context)
        }
    }

    /// Arms the stall check: the connection's command queue is full and `maxQueuedReplyBytes` of
    /// replies (or `maxTotalQueuedReplyBytes` on all connections) wait for clients, this one
    /// taking none, so neither side can go on (a client that writes its whole pipeline before
    /// reading, past what we buffer for it). When it fires, a connection whose client has taken
    /// none of its replies for `stallLimit` while commands of its wait is closed, and the log
    /// says why; one that took some in that time is looked at again `stallLimit` after that.
    private func watchStall(context: ChannelHandlerContext, in delay: TimeAmount = stallLimit) {
        guard stallWatch == nil else { return }
        stallWatch = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            stallWatch = nil
            // (Its queue need not be full now: a place freed on the other connections lets it
            // answer one more into the replies waiting, and read one more.)
            guard active, !closing, !pending.isEmpty, !context.channel.isWritable else { return }
            let quiet = NIODeadline.now() - lastTaken
            guard quiet >= Self.stallLimit else {
                watchStall(context: context, in: Self.stallLimit - quiet)
                return
            }
            let limit = queuedBytes >= configuration.maxQueuedReplyBytes
                ? "\(configuration.maxQueuedReplyBytes) bytes of replies (kv.reply_buffer: a pipeline read only once written whole cannot be longer)"
                : "\(configuration.maxTotalQueuedReplyBytes) bytes of replies waiting on all connections (kv.reply_buffer_total)"
            logger.warning("closing a RESP connection whose client takes none of its replies while it sends more", metadata: [
                "replies_waiting_bytes": "\(queuedBytes)", "commands_waiting": "\(pending.count)", "limit": "\(limit)",
            ])
            closing = true
            dropPending()
            context.close(promise: nil)
        }
    }

    private enum ImmediateOutcome { case noneAnswered, answered, closed }

    /// A GET's reply, its value where the backend holds it. A value under
    /// `RESPEncoder.zeroCopyThreshold` is copied into `out`, to go out with the batch's other
    /// replies in one write (a `writev` per small value cost a system call each: 2.8 times Redis's
    /// CPU for pipelined 4 KiB GETs). A larger one is written to the socket at once with `out`
    /// (the replies before it) in one `writev` when nothing of ours waits in the channel
    /// (`queuedWrites`; it would be overtaken): what the socket takes then is never copied. Else
    /// it is an ordinary reply, copied and encoded as any (in a buffer of its own, so `out` is not
    /// grown by every large value of a pipelined batch); and whatever the socket does not take
    /// (its buffer is full, or the write failed) is copied for the channel to write after the
    /// rest, and meets the same fate there (EAGAIN: written when the socket drains; an error: the
    /// channel closes).
    private func writeBulk(_ value: UnsafeRawBufferPointer, after out: inout ByteBuffer, context: ChannelHandlerContext) {
        if value.count < RESPEncoder.zeroCopyThreshold {
            RESPEncoder.writeBulkHeader(length: value.count, into: &out)
            out.writeBytes(value)
            out.writeRESPCRLF()
            return
        }
        guard queuedWrites == 0, let socket = socket(context) else {
            encode(RESPReply(.bulkString(context.channel.allocator.buffer(bytes: value))), into: &out, context: context)
            return
        }
        fitSendBuffer(value.count, socket: socket)
        RESPEncoder.writeBulkHeader(length: value.count, into: &out)
        let crlf: (UInt8, UInt8) = (0x0D, 0x0A)
        let all = withUnsafeBytes(of: crlf) { end in
            out.withUnsafeReadableBytes { replies in writeNow(replies, value, end, to: socket, context: context) }
        }
        if all { handler.stats.replySentDirectly() }
        out.clear()
    }

    /// Appends the reply to `out`; a large bulk payload is written as its own buffer, uncopied.
    private func encode(_ reply: RESPReply, into out: inout ByteBuffer, context: ChannelHandlerContext) {
        RESPEncoder.encode(reply.value, resp3: reply.resp3, into: &out) { out, payload in
            if out.readableBytes > 0 { enqueue(out, context: context) }
            out = context.channel.allocator.buffer(capacity: 64)
            if let socket = socket(context) { fitSendBuffer(payload.readableBytes, socket: socket) }
            enqueue(payload, context: context)
        }
    }

    private func finishBatch(
        context: ChannelHandlerContext, replies: [RESPReply], session: RESPSession, bytes: Int,
        protocolError: RESPProtocolError?
    ) {
        busy = false
        pendingBytes -= bytes
        guard active else { return }
        self.session = session
        var out = context.channel.allocator.buffer(capacity: 256)
        var closeAfter = false
        for reply in replies {
            encode(reply, into: &out, context: context)
            closeAfter = closeAfter || reply.closesConnection
        }
        if let protocolError, !closeAfter {
            RESPEncoder.encode(.error("ERR \(protocolError.message)"), into: &out)
            closeAfter = true
        }
        if closeAfter {
            closing = true
            dropPending()
            context.writeAndFlush(wrapOutboundOut(out)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            return
        }
        send(&out, context: context)
        parseAvailable()
        if readHeld && !full && !closing {
            readHeld = false
            context.read()
        }
        runNextBatch(context: context)
    }
}
