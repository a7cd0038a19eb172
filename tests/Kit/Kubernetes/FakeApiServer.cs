using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using System.Threading.Channels;
using k8s;
using k8s.Models;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// A Kubernetes API server for tests, at the wire level: plain HTTP/1.1 on a loopback socket, speaking list JSON
/// (kind XList, metadata.resourceVersion, limit/continue) and watch streams (chunked, one JSON event per line:
/// ADDED, MODIFIED, DELETED, BOOKMARK, ERROR with a 410 Status), so the real KubernetesClient talks to it
/// exactly as it talks to a cluster. Tests change objects, send bookmarks, drop connections, compact history
/// (410 Gone), hold or fail requests, and restart the server on the same port.
/// <code>
///   Apply/Delete ─► rv + 1 ─► history (per resource) ─┬─► every open watch of that resource (chunk per event)
///                                                     └─► later watches from an older rv replay it; before Compact(): 410
/// </code>
/// It also answers TokenReviews (authentication.k8s.io/v1) of the service-account tokens it made
/// (<see cref="ServiceAccountToken"/>): audiences, expiry, the pod binding in <c>extra</c>.
/// One request per connection (Connection: close) keeps the server small; HttpClient is fine with that.
/// </summary>
internal sealed partial class FakeApiServer : IAsyncDisposable
{
    private readonly object _gate = new();
    private readonly Func<int, Socket> _listen;
    private readonly Dictionary<string, Resource> _resources = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<Socket, byte> _connections = new();
    private readonly List<Watch> _watches = [];
    private readonly ConcurrentQueue<RequestRecord> _requests = new();
    private readonly List<StatusPatch> _statusPatches = [];
    private readonly Dictionary<string, TaskCompletionSource> _heldLists = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Queue<HttpStatusCode>> _failures = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _writes = new(StringComparer.Ordinal);
    private Socket? _listener;
    private Task _acceptLoop = Task.CompletedTask;
    private long _resourceVersion = 100;
    private long _bytesSent;
    private long _uid;
    private int _tokenReviews;
    private readonly ConcurrentDictionary<string, IssuedToken> _tokens = new(StringComparer.Ordinal);

    /// <summary>The audience of tokens made without one, and of reviews that name none: the API server's own.</summary>
    public const string ApiServerAudience = "https://kubernetes.default.svc.cluster.local";

    private const string TokenReviewPath = "/apis/authentication.k8s.io/v1/tokenreviews";

    private FakeApiServer(Func<int, Socket> listen)
    {
        _listen = listen;
        foreach (var type in new[] { typeof(V1Pod), typeof(V1Namespace), typeof(V1Service), typeof(V1EndpointSlice), typeof(V1DaemonSet), typeof(V1Deployment),
                     typeof(Weft.Policy.V1Alpha1AuthorizationPolicy), typeof(Weft.Policy.V1Alpha1PeerAuthentication),
                     typeof(V1Ingress), typeof(V1IngressClass), typeof(V1Secret), typeof(V1ConfigMap),
                     typeof(Weft.Gateway.GatewayClassResource), typeof(Weft.Gateway.GatewayResource), typeof(Weft.Gateway.HttpRouteResource), typeof(Weft.Gateway.ReferenceGrantResource) })
        {
            var entity = type.GetCustomAttribute<KubernetesEntityAttribute>()!;
            var resource = new Resource(entity.PluralName.ToLowerInvariant(), entity.Kind,
                string.IsNullOrEmpty(entity.Group) ? entity.ApiVersion : $"{entity.Group}/{entity.ApiVersion}",
                string.IsNullOrEmpty(entity.Group) ? $"/api/{entity.ApiVersion}/{entity.PluralName.ToLowerInvariant()}"
                    : $"/apis/{entity.Group}/{entity.ApiVersion}/{entity.PluralName.ToLowerInvariant()}");
            _resources[resource.Path] = resource;
        }
    }

    public int Port { get; private set; }

    /// <summary>
    /// Where <c>pods/NAME/portforward?ports=P</c> connects channel 0 of the WebSocket, given the pod's name and P;
    /// null (or no mapping) makes the kubelet's answer an error text on channel 1, as for a port nobody listens on.
    /// </summary>
    public Func<string, int, IPEndPoint?>? PortForwardTarget { get; set; }

    public string Url => $"http://127.0.0.1:{Port}";

    /// <summary>Bytes written to clients so far (HTTP heads and bodies, list and watch alike), as a client would receive them.</summary>
    public long BytesSent => Interlocked.Read(ref _bytesSent);

    /// <summary>Every PATCH of a status subresource so far, in arrival order (the fake applies them as JSON merge patches).</summary>
    public IReadOnlyList<StatusPatch> StatusPatches
    {
        get
        {
            lock (_gate)
            {
                return [.. _statusPatches];
            }
        }
    }

    /// <summary>Every request so far, in arrival order.</summary>
    public IReadOnlyList<RequestRecord> Requests => _requests.ToList();

    /// <summary>Starts listening on 127.0.0.1; <paramref name="listen"/> makes the listening socket for a port (0: any), e.g. inside a network namespace.</summary>
    public static FakeApiServer Start(Func<int, Socket>? listen = null)
    {
        var server = new FakeApiServer(listen ?? Loopback);
        server.Listen(0);
        return server;
    }

    public static Socket Loopback(int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, port));
        socket.Listen(64);
        return socket;
    }

    /// <summary>A real KubernetesClient pointed at this server.</summary>
    public IKubernetes Client() => new k8s.Kubernetes(new KubernetesClientConfiguration { Host = Url });

    /// <summary>A kubeconfig file naming this server, for `weft agent --kubeconfig`.</summary>
    public string WriteKubeconfig(string path)
    {
        File.WriteAllText(path, $"""
            apiVersion: v1
            kind: Config
            clusters:
            - name: fake
              cluster: {"{"}server: "{Url}"{"}"}
            users:
            - name: agent
              user: {"{"}token: "test-token"{"}"}
            contexts:
            - name: fake
              context: {"{"}cluster: fake, user: agent{"}"}
            current-context: fake
            """);
        return path;
    }

    public string CurrentResourceVersion
    {
        get
        {
            lock (_gate)
            {
                return _resourceVersion.ToString(CultureInfo.InvariantCulture);
            }
        }
    }

    /// <summary>Creates or replaces an object (ADDED or MODIFIED to watchers); gives it a uid when it has none. Returns its uid.</summary>
    public string Apply<T>(T obj) where T : IKubernetesObject<V1ObjectMeta>
    {
        var resource = ResourceOf(typeof(T));
        return Apply(resource, JsonNode.Parse(KubernetesJson.Serialize(obj))!.AsObject());
    }

    /// <summary>
    /// Creates or replaces an object given as JSON, as it is, whatever its shape: a client that cannot read it
    /// sees exactly what a real API server would send (a CRD with no schema admits such objects). Returns its uid.
    /// </summary>
    public string ApplyJson<T>(string json) where T : IKubernetesObject<V1ObjectMeta> =>
        Apply(ResourceOf(typeof(T)), JsonNode.Parse(json)!.AsObject());

    private string Apply(Resource resource, JsonObject node)
    {
        node["apiVersion"] = resource.ApiVersion;
        node["kind"] = resource.Kind;
        var metadata = node["metadata"]?.AsObject() ?? throw new ArgumentException("object without metadata");
        var key = Key(metadata);
        lock (_gate)
        {
            var exists = resource.Objects.TryGetValue(key, out var previous);
            if (metadata["uid"] is null)
            {
                metadata["uid"] = previous?["metadata"]?["uid"]?.GetValue<string>() ?? NewUid();
            }

            // As the API server does: generation counts spec changes; an update without status keeps the status
            // (it is the status subresource's to change).
            var generation = previous?["metadata"]?["generation"]?.GetValue<long>() ?? 0;
            metadata["generation"] = previous is null ? 1 : JsonNode.DeepEquals(previous["spec"], node["spec"]) ? generation : generation + 1;
            if (node["status"] is null && previous?["status"] is { } status)
            {
                node["status"] = status.DeepClone();
            }

            metadata["resourceVersion"] = (++_resourceVersion).ToString(CultureInfo.InvariantCulture);
            resource.Objects[key] = node;
            Emit(resource, exists ? "MODIFIED" : "ADDED", node);
            return metadata["uid"]!.GetValue<string>();
        }
    }

    /// <summary>The object as the server holds it now (status included), or null.</summary>
    public JsonObject? Get<T>(string? ns, string name) where T : IKubernetesObject<V1ObjectMeta>
    {
        var resource = ResourceOf(typeof(T));
        lock (_gate)
        {
            return resource.Objects.TryGetValue($"{ns}/{name}", out var node) ? node.DeepClone().AsObject() : null;
        }
    }

    /// <summary>Deletes an object (DELETED to watchers, carrying its last state); false when it did not exist.</summary>
    public bool Delete<T>(string? ns, string name) where T : IKubernetesObject<V1ObjectMeta>
    {
        var resource = ResourceOf(typeof(T));
        lock (_gate)
        {
            if (!resource.Objects.Remove($"{ns}/{name}", out var node))
            {
                return false;
            }

            node = node.DeepClone().AsObject();
            node["metadata"]!["resourceVersion"] = (++_resourceVersion).ToString(CultureInfo.InvariantCulture);
            Emit(resource, "DELETED", node);
            return true;
        }
    }

    /// <summary>Sends a BOOKMARK with the current resourceVersion on every watch that asked for bookmarks.</summary>
    public void Bookmark()
    {
        lock (_gate)
        {
            foreach (var watch in _watches.Where(w => w.Bookmarks))
            {
                var bookmark = new JsonObject
                {
                    ["kind"] = watch.Resource.Kind,
                    ["apiVersion"] = watch.Resource.ApiVersion,
                    ["metadata"] = new JsonObject { ["resourceVersion"] = _resourceVersion.ToString(CultureInfo.InvariantCulture) },
                };
                watch.Events.Writer.TryWrite(Event("BOOKMARK", bookmark));
            }
        }
    }

    /// <summary>Forgets the event history: watches from any older resourceVersion now get 410 Gone, as after etcd compaction.</summary>
    public void Compact()
    {
        lock (_gate)
        {
            foreach (var resource in _resources.Values)
            {
                resource.History.Clear();
                resource.CompactedAt = _resourceVersion;
            }
        }
    }

    /// <summary>Ends every open watch with an ERROR event carrying a 410 Status, the way the API server expires a watch.</summary>
    public void ExpireWatches()
    {
        lock (_gate)
        {
            foreach (var watch in _watches)
            {
                watch.Events.Writer.TryWrite(Gone(watch.ResourceVersion));
                watch.Events.Writer.TryComplete();
            }
        }
    }

    /// <summary>Cuts every open watch connection mid-stream (no final chunk), as a crashed server or a broken network would.</summary>
    public void DropWatches()
    {
        List<Watch> watches;
        lock (_gate)
        {
            watches = [.. _watches];
            _watches.Clear();
        }

        foreach (var watch in watches)
        {
            Abort(watch.Socket);
            watch.Events.Writer.TryComplete();
        }
    }

    /// <summary>Stops listening and cuts every connection; <see cref="Resume"/> listens again on the same port with the same objects.</summary>
    public async Task StopAsync()
    {
        _listener?.Close();
        await _acceptLoop.ConfigureAwait(false);
        DropWatches();
        foreach (var socket in _connections.Keys)
        {
            Abort(socket);
        }
    }

    public void Resume() => Listen(Port);

    /// <summary>List requests for a resource (e.g. "authorizationpolicies") wait until the returned release is called.</summary>
    public Action HoldLists(string resource)
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            _heldLists[resource] = release;
        }

        return () =>
        {
            lock (_gate)
            {
                _heldLists.Remove(resource);
            }

            release.TrySetResult();
        };
    }

    /// <summary>The next request of any kind for a resource gets this status (with a Status body), once per call.</summary>
    public void FailNext(string resource, HttpStatusCode status)
    {
        lock (_gate)
        {
            if (!_failures.TryGetValue(resource, out var queue))
            {
                _failures[resource] = queue = new Queue<HttpStatusCode>();
            }

            queue.Enqueue(status);
        }
    }

    /// <summary>How many watches of a resource are open now.</summary>
    public int OpenWatches(string resource)
    {
        lock (_gate)
        {
            return _watches.Count(w => w.Resource.Plural == resource);
        }
    }

    /// <summary>Waits until every watched kind has an open watch again (after drops, expiry or a restart).</summary>
    public async Task WaitForWatchesAsync(TimeSpan timeout, int kinds = 6)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            lock (_gate)
            {
                if (_watches.Select(w => w.Resource.Plural).Distinct().Count() >= kinds)
                {
                    return;
                }
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"only {string.Join(", ", _watches.Select(w => w.Resource.Plural))} are watched");
            }

            await Task.Delay(20);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        lock (_gate)
        {
            foreach (var held in _heldLists.Values)
            {
                held.TrySetResult();
            }
        }
    }

    private void Listen(int port)
    {
        var listener = _listen(port);
        Port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        _listener = listener;
        _acceptLoop = Task.Run(() => AcceptLoopAsync(listener));
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (true)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }

            _connections[socket] = 0;
            _ = Task.Run(async () =>
            {
                try
                {
                    await ServeAsync(socket);
                }
                catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
                {
                    // the client or a test cut the connection
                }
                finally
                {
                    _connections.TryRemove(socket, out _);
                    socket.Dispose();
                }
            });
        }
    }

    private async Task ServeAsync(Socket socket)
    {
        await using var stream = new CountingStream(socket, this);
        var head = await ReadHeadAsync(stream);
        if (head is null)
        {
            return;
        }

        var method = head.Split(' ')[0];
        var target = head.Split(' ')[1];
        var uri = new Uri("http://fake" + target);
        var query = System.Web.HttpUtility.ParseQueryString(uri.Query);
        var parameters = query.AllKeys.Where(k => k is not null).ToDictionary(k => k!, k => query[k] ?? "", StringComparer.Ordinal);
        var isWatch = parameters.TryGetValue("watch", out var watchValue) && watchValue is "true" or "1";
        _requests.Enqueue(new RequestRecord(uri.AbsolutePath, parameters, isWatch));

        var path = uri.AbsolutePath;
        string? ns = null;
        if (path == TokenReviewPath)
        {
            await TokenReviewAsync(stream, head);
            return;
        }

        if (PortForwardPath().Match(path) is { Success: true } forward)
        {
            await PortForwardAsync(stream, head, forward.Groups[1].Value, forward.Groups[2].Value, parameters);
            return;
        }

        if (method == "PATCH" && StatusPath().Match(path) is { Success: true } statusPath)
        {
            await PatchStatusAsync(stream, head, statusPath.Groups[1].Value + "/" + statusPath.Groups[3].Value,
                statusPath.Groups[2].Success ? statusPath.Groups[2].Value : null, statusPath.Groups[4].Value);
            return;
        }

        if (ItemPath().Match(path) is { Success: true } item && method is "GET" or "PUT"
            && _resources.TryGetValue(item.Groups[1].Value + "/" + item.Groups[3].Value, out var itemResource))
        {
            await ItemAsync(stream, head, method, itemResource, item.Groups[2].Value, item.Groups[4].Value);
            return;
        }

        if (method == "POST" && NamespacedPath().Match(path) is { Success: true } created
            && _resources.TryGetValue(created.Groups[1].Value + created.Groups[3].Value, out var createdResource))
        {
            await CreateAsync(stream, head, createdResource, created.Groups[2].Value);
            return;
        }

        if (NamespacedPath().Match(path) is { Success: true } namespaced)
        {
            ns = namespaced.Groups[2].Value;
            path = namespaced.Groups[1].Value + namespaced.Groups[3].Value;
        }

        if (!_resources.TryGetValue(path, out var resource))
        {
            await RespondAsync(stream, HttpStatusCode.NotFound, Status(404, "NotFound", $"the server could not find {uri.AbsolutePath}").ToJsonString());
            return;
        }

        HttpStatusCode? failure = null;
        Task? hold = null;
        lock (_gate)
        {
            if (_failures.TryGetValue(resource.Plural, out var queue) && queue.TryDequeue(out var status))
            {
                failure = status;
            }

            if (!isWatch && _heldLists.TryGetValue(resource.Plural, out var held))
            {
                hold = held.Task;
            }
        }

        if (failure is { } code)
        {
            await RespondAsync(stream, code, Status((int)code, code.ToString(), "injected failure").ToJsonString());
            return;
        }

        if (hold is not null)
        {
            await hold;
        }

        if (isWatch)
        {
            await WatchAsync(socket, stream, resource, parameters);
        }
        else
        {
            await RespondAsync(stream, HttpStatusCode.OK, List(resource, parameters, ns));
        }
    }

    /// <summary>A list, optionally of one namespace, filtered by equality label selectors and the spec.nodeName field selector.</summary>
    private string List(Resource resource, Dictionary<string, string> parameters, string? ns = null)
    {
        var labels = parameters.TryGetValue("labelSelector", out var ls) && ls.Length > 0
            ? ls.Split(',').Select(term => term.Split('=', 2)).ToList() : [];
        var fields = parameters.TryGetValue("fieldSelector", out var fs) && fs.Length > 0
            ? fs.Split(',').Select(term => term.Split('=', 2)).ToList() : [];
        if (fields.Any(f => f[0] is not ("spec.nodeName" or "type")) || labels.Any(l => l.Length != 2))
        {
            throw new NotSupportedException($"the fake API server understands label selectors key=value and the field selectors spec.nodeName and type (Secrets) only: {ls} {fs}");
        }

        bool Matches(JsonObject o) =>
            (ns is null || o["metadata"]?["namespace"]?.GetValue<string>() == ns)
            && labels.All(l => o["metadata"]?["labels"]?[l[0]]?.GetValue<string>() == l[1])
            && fields.All(f => (f[0] == "type" ? o["type"] : o["spec"]?["nodeName"])?.GetValue<string>() == f[1]);

        lock (_gate)
        {
            var all = resource.Objects.Values.Where(Matches).ToList();
            var offset = parameters.TryGetValue("continue", out var token) && token.Length > 0 ? int.Parse(token, CultureInfo.InvariantCulture) : 0;
            var limit = parameters.TryGetValue("limit", out var limitText) && int.TryParse(limitText, out var l) && l > 0 ? l : int.MaxValue;
            var page = all.Skip(offset).Take(limit).ToList();
            var metadata = new JsonObject { ["resourceVersion"] = _resourceVersion.ToString(CultureInfo.InvariantCulture) };
            if (offset + page.Count < all.Count)
            {
                metadata["continue"] = (offset + page.Count).ToString(CultureInfo.InvariantCulture);
            }

            var list = new JsonObject
            {
                ["kind"] = resource.Kind + "List",
                ["apiVersion"] = resource.ApiVersion,
                ["metadata"] = metadata,
                ["items"] = new JsonArray(page.Select(o => (JsonNode)o.DeepClone()).ToArray()),
            };
            return list.ToJsonString();
        }
    }

    private async Task WatchAsync(Socket socket, NetworkStream stream, Resource resource, Dictionary<string, string> parameters)
    {
        var from = parameters.TryGetValue("resourceVersion", out var rvText) && long.TryParse(rvText, out var rv) ? rv : 0;
        var bookmarks = parameters.TryGetValue("allowWatchBookmarks", out var b) && b is "true" or "1";
        var timeout = parameters.TryGetValue("timeoutSeconds", out var t) && int.TryParse(t, out var seconds) ? TimeSpan.FromSeconds(seconds) : TimeSpan.FromMinutes(30);
        var watch = new Watch(resource, socket, bookmarks, from);
        lock (_gate)
        {
            if (from < resource.CompactedAt)
            {
                watch.Events.Writer.TryWrite(Gone(from));
                watch.Events.Writer.TryComplete();
            }
            else
            {
                foreach (var (version, line) in resource.History.Where(h => h.Version > from))
                {
                    watch.Events.Writer.TryWrite(line);
                }

                _watches.Add(watch);
            }
        }

        try
        {
            var header = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            await stream.WriteAsync(Encoding.ASCII.GetBytes(header));
            using var expiry = new CancellationTokenSource(timeout);
            try
            {
                await foreach (var line in watch.Events.Reader.ReadAllAsync(expiry.Token))
                {
                    var bytes = Encoding.UTF8.GetBytes(line + "\n");
                    await stream.WriteAsync(Encoding.ASCII.GetBytes($"{bytes.Length:x}\r\n"));
                    await stream.WriteAsync(bytes);
                    await stream.WriteAsync("\r\n"u8.ToArray());
                    await stream.FlushAsync();
                }
            }
            catch (OperationCanceledException)
            {
                // timeoutSeconds passed: the server ends the watch cleanly
            }

            await stream.WriteAsync("0\r\n\r\n"u8.ToArray());
        }
        finally
        {
            lock (_gate)
            {
                _watches.Remove(watch);
            }
        }
    }

    /// <summary>
    /// <c>pods/NAME/portforward</c> as the API server and kubelet serve it to a WebSocket client (protocol
    /// "v4.channel.k8s.io"): RFC 6455 upgrade, then binary messages whose first byte is the channel. Each
    /// channel's first message is the port, 2 bytes little-endian; channel 0 then carries the bytes of one TCP
    /// connection to the pod's port, channel 1 the error text when that connection fails.
    /// </summary>
    private async Task PortForwardAsync(NetworkStream stream, string head, string ns, string pod, Dictionary<string, string> parameters)
    {
        HttpStatusCode? failure = null;
        lock (_gate)
        {
            if (_failures.TryGetValue("pods/portforward", out var queue) && queue.TryDequeue(out var status))
            {
                failure = status;
            }
        }

        var exists = _resources["/api/v1/pods"].Objects.ContainsKey($"{ns}/{pod}");
        if (failure is { } code || !exists)
        {
            var status = failure ?? HttpStatusCode.NotFound;
            var message = failure is null ? $"pods \"{pod}\" not found"
                : $"pods \"{pod}\" is forbidden: User \"alice\" cannot create resource \"pods/portforward\" in API group \"\" in the namespace \"{ns}\"";
            await RespondAsync(stream, status, Status((int)status, status.ToString(), message).ToJsonString());
            return;
        }

        var headers = head.Split("\r\n").Skip(1).Select(l => l.Split(':', 2)).Where(p => p.Length == 2)
            .ToDictionary(p => p[0].Trim(), p => p[1].Trim(), StringComparer.OrdinalIgnoreCase);
        if (!headers.TryGetValue("Upgrade", out var upgrade) || !upgrade.Equals("websocket", StringComparison.OrdinalIgnoreCase)
            || !headers.TryGetValue("Sec-WebSocket-Key", out var key))
        {
            await RespondAsync(stream, HttpStatusCode.BadRequest, Status(400, "BadRequest", "Upgrade request required").ToJsonString());
            return;
        }

        var offered = headers.TryGetValue("Sec-WebSocket-Protocol", out var p) ? p.Split(',').Select(x => x.Trim()).ToList() : [];
        const string protocol = "v4.channel.k8s.io";
        if (!offered.Contains(protocol))
        {
            await RespondAsync(stream, HttpStatusCode.BadRequest, Status(400, "BadRequest", $"subprotocols {string.Join(',', offered)} not supported").ToJsonString());
            return;
        }

        var port = int.Parse(parameters["ports"], CultureInfo.InvariantCulture);
        var accept = Convert.ToBase64String(SHA1.HashData(Encoding.ASCII.GetBytes(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")));
        await stream.WriteAsync(Encoding.ASCII.GetBytes(
            $"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"));
        using var socket = WebSocket.CreateFromStream(stream, new WebSocketCreationOptions { IsServer = true, SubProtocol = protocol });
        byte[] PortFrame(byte channel) => [channel, (byte)(port & 0xff), (byte)(port >> 8)];
        await socket.SendAsync(PortFrame(0), WebSocketMessageType.Binary, true, CancellationToken.None);
        await socket.SendAsync(PortFrame(1), WebSocketMessageType.Binary, true, CancellationToken.None);

        using var target = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            var endpoint = PortForwardTarget?.Invoke(pod, port) ?? throw new SocketException((int)SocketError.ConnectionRefused);
            await target.ConnectAsync(endpoint);
        }
        catch (SocketException)
        {
            var text = Encoding.UTF8.GetBytes($"error forwarding port {port} to pod {pod}, uid : failed to connect to localhost:{port}: connection refused");
            await socket.SendAsync((byte[])[1, .. text], WebSocketMessageType.Binary, true, CancellationToken.None);
            await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
            return;
        }

        var sendGate = new SemaphoreSlim(1, 1);
        var toPod = Task.Run(async () =>
        {
            var buffer = new byte[64 * 1024];
            while (true)
            {
                var result = await socket.ReceiveAsync(buffer, CancellationToken.None);
                if (result.MessageType == WebSocketMessageType.Close)
                {
                    target.Shutdown(SocketShutdown.Send);
                    return;
                }

                // Messages here are small (one HTTP request) and always whole; a partial one would still start with its channel.
                if (result.Count > 1 && buffer[0] == 0)
                {
                    await target.SendAsync(buffer.AsMemory(1, result.Count - 1));
                }
            }
        });
        var fromPod = Task.Run(async () =>
        {
            var buffer = new byte[64 * 1024];
            int n;
            while ((n = await target.ReceiveAsync(buffer.AsMemory(1))) > 0)
            {
                buffer[0] = 0;
                await sendGate.WaitAsync();
                try
                {
                    await socket.SendAsync(buffer.AsMemory(0, n + 1), WebSocketMessageType.Binary, true, CancellationToken.None);
                }
                finally
                {
                    sendGate.Release();
                }
            }
        });
        await Task.WhenAny(toPod, fromPod);
        try
        {
            await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, null, CancellationToken.None);
            await Task.WhenAny(toPod, Task.Delay(TimeSpan.FromSeconds(2)));
        }
        catch (WebSocketException)
        {
        }

        _ = toPod.ContinueWith(t => t.Exception, TaskScheduler.Default);
        _ = fromPod.ContinueWith(t => t.Exception, TaskScheduler.Default);
    }

    /// <summary>
    /// Creates a projected service-account token as kubelet would get it through the TokenRequest API: for
    /// <paramref name="serviceAccount"/> in <paramref name="ns"/>, for <paramref name="audiences"/> (default: the API
    /// server's own), bound to <paramref name="pod"/> (which must exist now; its uid is bound), expiring at
    /// <paramref name="expires"/> (default: in an hour; a past time makes an expired token). Only this server can check it.
    /// </summary>
    public string ServiceAccountToken(string ns, string serviceAccount, string? pod = null, IReadOnlyList<string>? audiences = null, DateTimeOffset? expires = null)
    {
        string? podUid = null;
        string? nodeName = null;
        if (pod is not null)
        {
            lock (_gate)
            {
                var podObject = _resources["/api/v1/pods"].Objects.GetValueOrDefault($"{ns}/{pod}") ?? throw new ArgumentException($"no pod {ns}/{pod} to bind the token to");
                podUid = podObject["metadata"]!["uid"]!.GetValue<string>();
                nodeName = podObject["spec"]?["nodeName"]?.GetValue<string>();
            }
        }

        var now = DateTimeOffset.UtcNow;
        var token = new IssuedToken(ns, serviceAccount, pod, podUid, nodeName, audiences ?? [ApiServerAudience], expires ?? now.AddHours(1), Guid.NewGuid().ToString());
        // Shaped like the real thing (a JWT: header.claims.signature), though only this server's table makes it valid.
        var claims = new JsonObject
        {
            ["aud"] = new JsonArray(token.Audiences.Select(a => (JsonNode)a).ToArray()),
            ["exp"] = token.Expires.ToUnixTimeSeconds(),
            ["iat"] = now.ToUnixTimeSeconds(),
            ["iss"] = ApiServerAudience,
            ["jti"] = token.Jti,
            ["sub"] = $"system:serviceaccount:{ns}:{serviceAccount}",
        };
        var text = $"{Base64Url("{\"alg\":\"RS256\",\"kid\":\"fake\"}"u8.ToArray())}.{Base64Url(Encoding.UTF8.GetBytes(claims.ToJsonString()))}.{Base64Url(RandomNumberGenerator.GetBytes(64))}";
        _tokens[text] = token;
        return text;
    }

    /// <summary>
    /// Whether a TokenReview of a pod-bound token checks that the pod still exists with the bound uid, as the real
    /// API server does (default). Off: an API server whose view of pods lags, so only the caller's own pod watch
    /// notices a deleted pod.
    /// </summary>
    public bool ChecksBoundPods { get; set; } = true;

    /// <summary>TokenReviews answered so far.</summary>
    public int TokenReviews => Volatile.Read(ref _tokenReviews);

    /// <summary>
    /// <c>POST /apis/authentication.k8s.io/v1/tokenreviews</c>: the JSON TokenReview in, the same object with its
    /// status out (201 Created), as the API server answers: authenticated with the service account's user name,
    /// groups and the pod binding in <c>extra</c>, and the audiences that both the token and the review name;
    /// or authenticated=false with an error for an unknown, expired, wrong-audience or unbound token.
    /// </summary>
    private async Task TokenReviewAsync(NetworkStream stream, string head)
    {
        HttpStatusCode? failure = null;
        lock (_gate)
        {
            if (_failures.TryGetValue("tokenreviews", out var queue) && queue.TryDequeue(out var failing))
            {
                failure = failing;
            }
        }

        var headers = head.Split("\r\n").Skip(1).Select(l => l.Split(':', 2)).Where(p => p.Length == 2)
            .ToDictionary(p => p[0].Trim(), p => p[1].Trim(), StringComparer.OrdinalIgnoreCase);
        if (!head.StartsWith("POST ", StringComparison.Ordinal) || !headers.TryGetValue("Content-Length", out var lengthText)
            || !int.TryParse(lengthText, CultureInfo.InvariantCulture, out var length) || length is < 0 or > 1 << 20)
        {
            await RespondAsync(stream, HttpStatusCode.BadRequest, Status(400, "BadRequest", "a TokenReview is a POST with a Content-Length body").ToJsonString());
            return;
        }

        var body = new byte[length];
        await stream.ReadExactlyAsync(body);
        if (failure is { } code)
        {
            await RespondAsync(stream, code, Status((int)code, code.ToString(), "injected failure").ToJsonString());
            return;
        }

        JsonObject review;
        try
        {
            review = JsonNode.Parse(body)?.AsObject() ?? throw new System.Text.Json.JsonException("null");
        }
        catch (System.Text.Json.JsonException e)
        {
            await RespondAsync(stream, HttpStatusCode.BadRequest, Status(400, "BadRequest", $"invalid TokenReview JSON: {e.Message}").ToJsonString());
            return;
        }

        if (review["kind"]?.GetValue<string>() is not ("TokenReview" or null) || review["spec"]?["token"]?.GetValue<string>() is not { Length: > 0 } tokenText)
        {
            await RespondAsync(stream, HttpStatusCode.UnprocessableEntity, Status(422, "Invalid", "TokenReview.authentication.k8s.io is invalid: spec.token: Required value").ToJsonString());
            return;
        }

        Interlocked.Increment(ref _tokenReviews);
        var wanted = review["spec"]?["audiences"]?.AsArray().Select(a => a!.GetValue<string>()).ToList() is { Count: > 0 } asked ? asked : [ApiServerAudience];
        var status = new JsonObject { ["user"] = new JsonObject() };
        string? error = null;
        if (!_tokens.TryGetValue(tokenText, out var token))
        {
            error = "invalid bearer token";
        }
        else if (token.Expires <= DateTimeOffset.UtcNow)
        {
            error = "[invalid bearer token, service account token has expired]";
        }
        else if (!token.Audiences.Intersect(wanted, StringComparer.Ordinal).Any())
        {
            error = $"[invalid bearer token, token audiences [{string.Join(" ", token.Audiences.Select(a => $"\"{a}\""))}] is invalid for the target audiences [{string.Join(" ", wanted.Select(a => $"\"{a}\""))}]]";
        }
        else if (token.Pod is not null && ChecksBoundPods)
        {
            lock (_gate)
            {
                var podObject = _resources["/api/v1/pods"].Objects.GetValueOrDefault($"{token.Namespace}/{token.Pod}");
                if (podObject is null)
                {
                    error = $"[invalid bearer token, pods \"{token.Pod}\" not found]";
                }
                else if (podObject["metadata"]?["uid"]?.GetValue<string>() != token.PodUid)
                {
                    error = $"[invalid bearer token, pod UID ({podObject["metadata"]?["uid"]}) does not match claim ({token.PodUid})]";
                }
            }
        }

        if (error is null)
        {
            var extra = new JsonObject { ["authentication.kubernetes.io/credential-id"] = new JsonArray($"JTI={token!.Jti}") };
            if (token.Pod is not null)
            {
                extra["authentication.kubernetes.io/pod-name"] = new JsonArray(token.Pod);
                extra["authentication.kubernetes.io/pod-uid"] = new JsonArray(token.PodUid);
                if (token.NodeName is not null)
                {
                    extra["authentication.kubernetes.io/node-name"] = new JsonArray(token.NodeName);
                }
            }

            status["authenticated"] = true;
            status["user"] = new JsonObject
            {
                ["username"] = $"system:serviceaccount:{token.Namespace}:{token.ServiceAccount}",
                ["uid"] = $"sa-{token.Namespace}-{token.ServiceAccount}",
                ["groups"] = new JsonArray("system:serviceaccounts", $"system:serviceaccounts:{token.Namespace}", "system:authenticated"),
                ["extra"] = extra,
            };
            status["audiences"] = new JsonArray(token.Audiences.Intersect(wanted, StringComparer.Ordinal).Select(a => (JsonNode)a).ToArray());
        }
        else
        {
            status["error"] = error;
        }

        var answer = new JsonObject
        {
            ["kind"] = "TokenReview",
            ["apiVersion"] = "authentication.k8s.io/v1",
            ["metadata"] = new JsonObject { ["creationTimestamp"] = null },
            ["spec"] = review["spec"]!.DeepClone(),
            ["status"] = status,
        };
        await RespondAsync(stream, HttpStatusCode.Created, answer.ToJsonString());
    }

    private static string Base64Url(byte[] bytes) => Convert.ToBase64String(bytes).TrimEnd('=').Replace('+', '-').Replace('/', '_');

    /// <summary>
    /// PATCH of a status subresource, as a controller writes status: the body must be a JSON merge patch (RFC 7386)
    /// touching only status; it is recorded, applied, and sent to watchers as MODIFIED; the answer is the object.
    /// </summary>
    private async Task PatchStatusAsync(NetworkStream stream, string head, string resourcePath, string? ns, string name)
    {
        var headers = head.Split("\r\n").Skip(1).Select(l => l.Split(':', 2)).Where(p => p.Length == 2)
            .ToDictionary(p => p[0].Trim(), p => p[1].Trim(), StringComparer.OrdinalIgnoreCase);
        var length = headers.TryGetValue("Content-Length", out var text) ? int.Parse(text, CultureInfo.InvariantCulture) : 0;
        var body = new byte[length];
        await stream.ReadExactlyAsync(body);
        var contentType = headers.GetValueOrDefault("Content-Type") ?? "";
        if (!_resources.TryGetValue(resourcePath, out var resource))
        {
            await RespondAsync(stream, HttpStatusCode.NotFound, Status(404, "NotFound", $"the server could not find {resourcePath}").ToJsonString());
            return;
        }

        if (!contentType.StartsWith("application/merge-patch+json", StringComparison.Ordinal))
        {
            await RespondAsync(stream, HttpStatusCode.UnsupportedMediaType, Status(415, "UnsupportedMediaType", $"the fake takes JSON merge patches, not {contentType}").ToJsonString());
            return;
        }

        var patch = JsonNode.Parse(body)!.AsObject();
        if (patch.Any(p => p.Key != "status"))
        {
            await RespondAsync(stream, HttpStatusCode.UnprocessableEntity, Status(422, "Invalid", "a status patch may change status only").ToJsonString());
            return;
        }

        string answer;
        lock (_gate)
        {
            _statusPatches.Add(new StatusPatch(resource.Kind, ns, name, patch["status"]?.DeepClone().AsObject() ?? new JsonObject()));
            if (!resource.Objects.TryGetValue($"{ns}/{name}", out var current))
            {
                answer = "";
            }
            else
            {
                current["status"] = MergePatch(current["status"], patch["status"]);
                current["metadata"]!["resourceVersion"] = (++_resourceVersion).ToString(CultureInfo.InvariantCulture);
                Emit(resource, "MODIFIED", current);
                answer = current.ToJsonString();
            }
        }

        if (answer.Length == 0)
        {
            await RespondAsync(stream, HttpStatusCode.NotFound, Status(404, "NotFound", $"{resource.Plural} \"{name}\" not found").ToJsonString());
            return;
        }

        await RespondAsync(stream, HttpStatusCode.OK, answer);
    }

    /// <summary>Writes made through the API (create and replace) so far, by resource plural.</summary>
    public int Writes(string plural)
    {
        lock (_gate)
        {
            return _writes.GetValueOrDefault(plural);
        }
    }

    /// <summary>GET of one object (404 when missing) or its replacement by PUT (409 when the body's resourceVersion is not the current one).</summary>
    private async Task ItemAsync(NetworkStream stream, string head, string method, Resource resource, string ns, string name)
    {
        var body = method == "PUT" ? await ReadBodyAsync(stream, head) : null;
        HttpStatusCode status;
        string answer;
        lock (_gate)
        {
            resource.Objects.TryGetValue($"{ns}/{name}", out var current);
            if (current is null)
            {
                (status, answer) = (HttpStatusCode.NotFound, Status(404, "NotFound", $"{resource.Plural} \"{name}\" not found").ToJsonString());
            }
            else if (body is null)
            {
                (status, answer) = (HttpStatusCode.OK, current.ToJsonString());
            }
            else if (body["metadata"]?["resourceVersion"]?.GetValue<string>() is { } version && version != current["metadata"]!["resourceVersion"]!.GetValue<string>())
            {
                (status, answer) = (HttpStatusCode.Conflict, Status(409, "Conflict",
                    $"Operation cannot be fulfilled on {resource.Plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again").ToJsonString());
            }
            else
            {
                Apply(resource, body);
                _writes[resource.Plural] = _writes.GetValueOrDefault(resource.Plural) + 1;
                (status, answer) = (HttpStatusCode.OK, resource.Objects[$"{ns}/{name}"].ToJsonString());
            }
        }

        await RespondAsync(stream, status, answer);
    }

    /// <summary>POST to a namespaced collection: 201 with the object, or 409 AlreadyExists.</summary>
    private async Task CreateAsync(NetworkStream stream, string head, Resource resource, string ns)
    {
        var body = await ReadBodyAsync(stream, head);
        var name = body["metadata"]?["name"]?.GetValue<string>() ?? "";
        HttpStatusCode status;
        string answer;
        lock (_gate)
        {
            if (resource.Objects.ContainsKey($"{ns}/{name}"))
            {
                (status, answer) = (HttpStatusCode.Conflict, Status(409, "AlreadyExists", $"{resource.Plural} \"{name}\" already exists").ToJsonString());
            }
            else
            {
                body["metadata"]!["namespace"] = ns;
                Apply(resource, body);
                _writes[resource.Plural] = _writes.GetValueOrDefault(resource.Plural) + 1;
                (status, answer) = (HttpStatusCode.Created, resource.Objects[$"{ns}/{name}"].ToJsonString());
            }
        }

        await RespondAsync(stream, status, answer);
    }

    private static async Task<JsonObject> ReadBodyAsync(NetworkStream stream, string head)
    {
        var headers = head.Split("\r\n").Skip(1).Select(l => l.Split(':', 2)).Where(p => p.Length == 2)
            .ToDictionary(p => p[0].Trim(), p => p[1].Trim(), StringComparer.OrdinalIgnoreCase);
        var length = headers.TryGetValue("Content-Length", out var text) ? int.Parse(text, CultureInfo.InvariantCulture) : 0;
        var body = new byte[length];
        await stream.ReadExactlyAsync(body);
        return JsonNode.Parse(body)!.AsObject();
    }

    /// <summary>RFC 7386: objects merge key by key, null removes, anything else replaces.</summary>
    private static JsonNode? MergePatch(JsonNode? target, JsonNode? patch)
    {
        if (patch is not JsonObject patchObject)
        {
            return patch?.DeepClone();
        }

        var result = target is JsonObject targetObject ? targetObject.DeepClone().AsObject() : new JsonObject();
        foreach (var (key, value) in patchObject)
        {
            if (value is null)
            {
                result.Remove(key);
            }
            else
            {
                result[key] = MergePatch(result[key], value);
            }
        }

        return result;
    }

    [GeneratedRegex("^(/apis?/.+?)(?:/namespaces/([^/]+))?/([^/]+)/([^/]+)/status$")]
    private static partial Regex StatusPath();

    [GeneratedRegex("^/api/v1/namespaces/([^/]+)/pods/([^/]+)/portforward$")]
    private static partial Regex PortForwardPath();

    [GeneratedRegex("^(/apis?/.+?)/namespaces/([^/]+)/([^/]+)/([^/]+)$")]
    private static partial Regex ItemPath();

    [GeneratedRegex("^(/apis?/.+?)/namespaces/([^/]+)(/[^/]+)$")]
    private static partial Regex NamespacedPath();

    /// <summary>Caller holds the gate.</summary>
    private void Emit(Resource resource, string type, JsonObject node)
    {
        var line = Event(type, node.DeepClone());
        resource.History.Add((_resourceVersion, line));
        foreach (var watch in _watches.Where(w => w.Resource == resource))
        {
            watch.Events.Writer.TryWrite(line);
        }
    }

    private static string Event(string type, JsonNode node) => new JsonObject { ["type"] = type, ["object"] = node }.ToJsonString();

    private static string Gone(long from) =>
        Event("ERROR", Status(410, "Expired", $"too old resource version: {from}"));

    private static JsonObject Status(int code, string reason, string message) => new()
    {
        ["kind"] = "Status",
        ["apiVersion"] = "v1",
        ["metadata"] = new JsonObject(),
        ["status"] = "Failure",
        ["message"] = message,
        ["reason"] = reason,
        ["code"] = code,
    };

    /// <summary>The connection's stream, counting what it writes into <see cref="BytesSent"/>.</summary>
    private sealed class CountingStream(Socket socket, FakeApiServer server) : NetworkStream(socket, ownsSocket: false)
    {
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        {
            Interlocked.Add(ref server._bytesSent, count);
            return base.WriteAsync(buffer, offset, count, cancellationToken);
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Interlocked.Add(ref server._bytesSent, buffer.Length);
            return base.WriteAsync(buffer, cancellationToken);
        }
    }

    private static async Task RespondAsync(NetworkStream stream, HttpStatusCode status, string body)
    {
        var bytes = Encoding.UTF8.GetBytes(body);
        var head = $"HTTP/1.1 {(int)status} {status}\r\nContent-Type: application/json\r\nContent-Length: {bytes.Length}\r\nConnection: close\r\n\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head));
        await stream.WriteAsync(bytes);
        await stream.FlushAsync();
    }

    private static async Task<string?> ReadHeadAsync(NetworkStream stream)
    {
        var buffer = new List<byte>();
        var one = new byte[1];
        while (buffer.Count < 65536)
        {
            if (await stream.ReadAsync(one) == 0)
            {
                return null;
            }

            buffer.Add(one[0]);
            var n = buffer.Count;
            if (n >= 4 && buffer[n - 4] == '\r' && buffer[n - 3] == '\n' && buffer[n - 2] == '\r' && buffer[n - 1] == '\n')
            {
                return Encoding.ASCII.GetString(buffer.ToArray());
            }
        }

        return null;
    }

    private static void Abort(Socket socket)
    {
        try
        {
            // Linger 0: close sends RST, so the client sees the connection break instead of an orderly end.
            socket.LingerState = new LingerOption(true, 0);
            socket.Close();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private Resource ResourceOf(Type type)
    {
        var plural = type.GetCustomAttribute<KubernetesEntityAttribute>()!.PluralName.ToLowerInvariant();
        return _resources.Values.Single(r => r.Plural == plural);
    }

    private string NewUid() => $"00000000-0000-4000-8000-{Interlocked.Increment(ref _uid):x12}";

    private static string Key(JsonObject metadata) =>
        $"{metadata["namespace"]?.GetValue<string>()}/{metadata["name"]?.GetValue<string>()}";

    private sealed class Resource(string plural, string kind, string apiVersion, string path)
    {
        public string Plural { get; } = plural;

        public string Kind { get; } = kind;

        public string ApiVersion { get; } = apiVersion;

        public string Path { get; } = path;

        public SortedDictionary<string, JsonObject> Objects { get; } = new(StringComparer.Ordinal);

        public List<(long Version, string Line)> History { get; } = [];

        public long CompactedAt { get; set; }
    }

    private sealed record IssuedToken(string Namespace, string ServiceAccount, string? Pod, string? PodUid, string? NodeName, IReadOnlyList<string> Audiences,
        DateTimeOffset Expires, string Jti);

    private sealed class Watch(Resource resource, Socket socket, bool bookmarks, long resourceVersion)
    {
        public Resource Resource { get; } = resource;

        public Socket Socket { get; } = socket;

        public bool Bookmarks { get; } = bookmarks;

        public long ResourceVersion { get; } = resourceVersion;

        public Channel<string> Events { get; } = Channel.CreateUnbounded<string>();
    }
}

/// <summary>One status subresource PATCH: the kind, namespace (null when cluster-scoped), name and the status it sent.</summary>
internal sealed record StatusPatch(string Kind, string? Namespace, string Name, JsonObject Status);

/// <summary>One request the fake API server received.</summary>
internal sealed record RequestRecord(string Path, IReadOnlyDictionary<string, string> Query, bool Watch)
{
    public string? ResourceVersion => Query.TryGetValue("resourceVersion", out var rv) ? rv : null;

    public override string ToString() => $"{(Watch ? "WATCH" : "LIST")} {Path}?{string.Join('&', Query.Select(q => $"{q.Key}={q.Value}"))}";
}
