import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import NIOPosix

extension Gateway {
    /// Relays one OpenAI request: validates it, waits for a lease on a ready upstream, forwards
    /// the body untouched (only `model` may be renamed), and streams the answer back as it comes.
    func proxy(_ request: Request, context: GatewayRequestContext, endpoint: Endpoint) async throws -> Response {
        let started = ContinuousClock.now
        var request = request
        // Refused before a model is known (a bad key, a policy header, a body too large or not
        // the endpoint's): counted all the same, under no model.
        var parsed: ParsedBody
        do {
            let tenant = try authorize(request)
            let policy = try self.policy(of: request.headers, tenant: tenant)
            let body: ByteBuffer
            do {
                body = try await request.collectBody(upTo: configuration.maxBodyBytes)
            } catch is NIOTooManyBytesError {
                throw GatewayError.requestTooLarge(limit: configuration.maxBodyBytes)
            }
            parsed = try parseBody(body, endpoint: endpoint)
            addHints(to: &parsed, headers: request.headers, tenant: tenant, policy: policy)
        } catch let error as GatewayError {
            metrics.rejected(model: "", endpoint: endpoint, code: error.code)
            throw error
        }
        // Streams notice a departed client on their next chunk.
        guard configuration.cancelOnDisconnect, !parsed.stream, let departure = await context.departure() else {
            return try await relay(parsed, endpoint: endpoint, started: started)
        }
        // A non-streaming request writes nothing until the answer is complete, so the connection
        // is watched instead: a client that leaves withdraws its wait and stops the generation.
        // The watch reads nothing of the connection, which stays open for the next request.
        let relaying = Task { try await relay(parsed, endpoint: endpoint, started: started) }
        departure.watch { relaying.cancel() }
        defer { departure.unwatch() }
        do {
            return try await withTaskCancellationHandler {
                try await relaying.value
            } onCancel: {
                relaying.cancel()
            }
        } catch is CancellationError where departure.hasDeparted {
            // Nobody to answer (a client that only ended its input gets the end of the
            // connection, as on the event-loop relay, not an empty 500).
            context.channel.close(promise: nil)
            throw CancellationError()
        }
    }

    func relay(_ parsed: ParsedBody, endpoint: Endpoint, started: ContinuousClock.Instant) async throws
        -> Response
    {
        var hints = parsed.hints
        var acquired: UpstreamLease
        var admitted: ContinuousClock.Instant
        var response: HTTPClientResponse
        // A stream's head goes to the client with its first event, so a runtime that fails
        // before that event (while computing the prompt) is retried like one that never answered.
        var events: UpstreamEvents?
        var resentAfterDeath = false
        var routedAgainAfterRefusal = false
        // Replicas that answered with a server error: blamed only if another then serves it.
        // (Every other replica is tried, so two failing ones do not hide a third that serves.)
        var serverErrorsFrom: [String] = []
        // An error answer read whole while deciding whether to try another replica.
        var answered: (status: Int, body: ByteBuffer)?
        // Until the first byte of an answer, a failed upstream is retried on another replica
        // (when the model has one), or once on the runtime started in place of one that died;
        // after it, the client has seen the answer begin.
        while true {
            do {
                acquired = try await backend.acquire(model: parsed.model, hints: hints)
            } catch let error as GatewayError {
                metrics.rejected(model: parsed.model, endpoint: endpoint, code: error.code)
                throw error
            } catch is CancellationError {
                metrics.departed(model: parsed.model, endpoint: endpoint)   // it left while waiting
                throw CancellationError()
            }
            admitted = ContinuousClock.now

            var upstreamRequest = HTTPClientRequest(url: acquired.baseURL + endpoint.suffix)
            upstreamRequest.method = .POST
            upstreamRequest.headers.add(name: "Content-Type", value: "application/json")
            upstreamRequest.headers.add(name: "Accept", value: parsed.stream ? "text/event-stream" : "application/json")
            if parsed.stream {
                // llama-server closes the connection after every stream without saying so; a pooled
                // connection would then fail the next request sent on it. Streams run long enough
                // that a new connection each costs nothing measurable.
                upstreamRequest.headers.add(name: "Connection", value: "close")
            }
            for (name, value) in acquired.headers { upstreamRequest.headers.replaceOrAdd(name: name, value: value) }
            upstreamRequest.body = .bytes(try Self.rewriteBody(parsed, for: acquired))

            do {
                response = try await httpClient.execute(upstreamRequest, timeout: .init(configuration.upstreamTimeout))
                if response.status.code >= 500 {
                    let body = try await response.body.collect(upTo: configuration.maxResponseBytes)
                    // The request's own doing in a server error's clothes (an image sent to a
                    // model without vision): a 400 for the client, no other replica tried.
                    if let shaped = Self.openAIShaped(status: Int(response.status.code), body: body, endpoint: endpoint) {
                        answered = shaped
                        break
                    }
                    if acquired.hasAlternatives, hints.excluding.count < 8 {
                        // A server error: the client has seen none of it, so another replica gets
                        // the request. It counts against this one only if another serves it (the
                        // same request erring everywhere is the request's doing).
                        acquired.release(.abandoned)
                        logger.warning("\(acquired.upstreamLabel) answered \(response.status.code); trying another replica")
                        serverErrorsFrom.append(acquired.upstreamLabel)
                        hints.excluding.insert(acquired.upstreamLabel)
                        metrics.retried(model: parsed.model, endpoint: endpoint)
                        continue
                    }
                    answered = (Int(response.status.code), body)
                    break
                }
                if parsed.stream, Self.isEventStream(response) {
                    events = try await UpstreamEvents(response.body)
                }
                break
            } catch {
                if Task.isCancelled {
                    acquired.release(.abandoned)   // the client left; says nothing of the upstream
                    metrics.departed(model: parsed.model, endpoint: endpoint)
                    throw CancellationError()
                }
                if isStopping {
                    acquired.release(.abandoned)   // cut by the stop; says nothing of the upstream
                    throw stoppingError(parsed.model)
                }
                let refused = refusedConnection(error)
                acquired.release(refused ? .unreachable : .upstreamFailed)
                if acquired.hasAlternatives, hints.excluding.count < 8 {
                    logger.warning("\(acquired.upstreamLabel) failed before answering (\(describe(error))); trying another replica")
                    hints.excluding.insert(acquired.upstreamLabel)
                    metrics.retried(model: parsed.model, endpoint: endpoint)
                    continue
                }
                // The last replica up refused the connection: it is out now, so the request is
                // routed again, once, and finds another that came up or gets the 503 of a model
                // with every replica down.
                if refused, !routedAgainAfterRefusal, acquired.routedAmongReplicas {
                    routedAgainAfterRefusal = true
                    continue
                }
                // Once only: a request that crashes its runtime must not crash it again and again.
                if !resentAfterDeath, let died = acquired.runtimeDied, await died(), !Task.isCancelled {
                    resentAfterDeath = true
                    logger.warning("the runtime for '\(parsed.model)' died before answering (\(describe(error))); sending the request again to the one started in its place")
                    metrics.retried(model: parsed.model, endpoint: endpoint)
                    continue
                }
                metrics.rejected(model: parsed.model, endpoint: endpoint, code: "runtime_failed")
                throw GatewayError.badGateway("The runtime for '\(parsed.model)' did not answer: \(describe(error))")
            }
        }

        let (lease, upstreamResponse) = (acquired, response)
        let status = HTTPResponse.Status(code: answered?.status ?? Int(upstreamResponse.status.code))
        let outcome: LeaseOutcome = status.code >= 500 ? .serverErrorUnretried : .served(after: serverErrorsFrom)
        let contentType = upstreamResponse.headers.first(name: "content-type") ?? "application/json"
        let observer = RequestObserver(
            metrics: metrics, model: lease.servedModel ?? parsed.model, endpoint: endpoint, started: started, admitted: admitted,
            statusCode: status.code, tenant: parsed.hints.tenant, price: lease.price, cacheReport: lease.cacheReport)
        var servedBy: HTTPFields = [:]
        if let served = lease.servedModel { servedBy[Self.servedByHeader] = served }

        if let events {
            let logger = self.logger
            let upstreamLabel = lease.upstreamLabel
            let model = parsed.model
            var headers: HTTPFields = [.contentType: contentType, .cacheControl: "no-cache", Self.accelBuffering: "no"]
            headers.append(contentsOf: servedBy)
            return Response(
                status: status, headers: headers,
                body: ResponseBody { writer in
                    defer { lease.release(outcome) }
                    do {
                        var next = events.first   // (nil: the stream ended before any event)
                        while let chunk = next {
                            observer.streamed(chunk)
                            do {
                                try await writer.write(chunk)
                            } catch {
                                // the client went away; leaving the loop drops the upstream request
                                observer.finish(outcome: "client_disconnected")
                                throw error
                            }
                            next = try await events.next()
                        }
                    } catch {
                        if Task.isCancelled || error is CancellationError {
                            observer.finish(outcome: "cancelled")
                            throw error
                        }
                        if observer.isFinished { throw error }
                        if self.isStopping {
                            // Cut by a stop (`cutForStop`): the client learns why, then the end.
                            observer.finish(outcome: "cancelled")
                            try await writer.write(self.stoppingError(model).sseEvent)
                            try await writer.finish(nil)
                            return
                        }
                        // Headers are out; the clean error is an SSE error event, then the end.
                        logger.warning("stream from \(upstreamLabel) broke: \(describe(error))")
                        observer.finish(outcome: "runtime_failed")
                        try await writer.write(GatewayError.badGateway(
                            "The runtime for '\(model)' failed mid-stream: \(describe(error))").sseEvent)
                        try await writer.finish(nil)
                        return
                    }
                    observer.finish(outcome: "ok")
                    try await writer.finish(nil)
                })
        }

        // Non-streaming: buffer the answer; a client that goes away cancels the upstream request.
        var collected: ByteBuffer
        do {
            if let answered {
                collected = answered.body
            } else {
                collected = try await upstreamResponse.body.collect(upTo: configuration.maxResponseBytes)
                if let shaped = Self.openAIShaped(status: status.code, body: collected, endpoint: endpoint) { collected = shaped.body }
            }
        } catch {
            lease.release()
            if Task.isCancelled {
                observer.finish(outcome: "client_disconnected")
                throw CancellationError()
            }
            observer.finish(outcome: "runtime_failed")
            if isStopping { throw stoppingError(parsed.model) }
            throw GatewayError.badGateway("The runtime for '\(parsed.model)' failed before answering: \(describe(error))")
        }
        observer.completed(collected)   // reports the cached share to the lease, so before its release
        lease.release(outcome)
        var headers: HTTPFields = [.contentType: contentType]
        headers.append(contentsOf: servedBy)
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: collected))
    }

    /// A stream's events from the upstream, its first already received. Made by the request's
    /// task, then read only by the task that writes the answer, once the first is done with it:
    /// never by two at once (the iterator is not Sendable for that reason).
    final class UpstreamEvents: @unchecked Sendable {
        let first: ByteBuffer?
        private var rest: HTTPClientResponse.Body.AsyncIterator

        init(_ body: HTTPClientResponse.Body) async throws {
            rest = body.makeAsyncIterator()
            first = try await rest.next()
        }

        func next() async throws -> ByteBuffer? { try await rest.next() }
    }

    /// An answer that is a server-sent event stream (relayed as it comes), not an error answer.
    static func isEventStream(_ response: HTTPClientResponse) -> Bool {
        (response.headers.first(name: "content-type") ?? "").hasPrefix("text/event-stream")
    }

    /// Tells a proxy in front (nginx) to pass a stream's events on as they come, as llama-server's
    /// own streams say.
    static let accelBuffering = HTTPField.Name("X-Accel-Buffering")!

    /// The header that names the model that served a request (a fallback, say).
    static let servedByName: StaticString = "x-strata-served-by"
    static let servedByHeader = HTTPField.Name(servedByName.description)!
}

/// Whether a connect was refused (every attempt): nothing listens there.
public func refusedConnection(_ error: any Error) -> Bool {
    if let error = error as? IOError { return error.errnoCode == ECONNREFUSED }
    if let error = error as? NIOConnectionError {
        return !error.connectionErrors.isEmpty && error.connectionErrors.allSatisfy { refusedConnection($0.error) }
    }
    return false
}

/// An error as people read it in a log line or an error answer: a socket error by its system
/// message ("Connection refused (errno 111)", not NIO's "connection reset (error set): …"), a
/// failed connect by the error of its attempt, anything else as it describes itself (shortened).
public func describe(_ error: any Error) -> String {
    if let error = error as? HTTPClientError {
        if error == .readTimeout { return "nothing received for gateway.upstream_timeout" }
        return String(describing: error)
    }
    if let error = error as? IOError { return String(cString: strerror(error.errnoCode)) + " (errno \(error.errnoCode))" }
    if let error = error as? NIOConnectionError, let attempt = error.connectionErrors.first {
        return describe(attempt.error)
    }
    let text = String(describing: error)
    return text.count > 300 ? String(text.prefix(300)) + "…" : text
}
