using System.Net;
using System.Net.Sockets;
using System.Net.WebSockets;
using System.Text;
using k8s;
using k8s.Autorest;

namespace Weft.Cli;

/// <summary>
/// A pod's port through the Kubernetes API server, as <c>kubectl port-forward</c> does it: <c>--node NAME</c>
/// reaches another node's agent admin API this way, <c>weft check --cluster</c> the CA service's pods.
/// <code>
///   AdminClient ──HTTP/1.1──► 127.0.0.1:&lt;any&gt; (local listener)
///                                 │ one WebSocket per accepted connection ("v4.channel.k8s.io")
///                                 ▼
///   API server /api/v1/namespaces/weft-system/pods/&lt;agent on NAME&gt;/portforward?ports=15000
///        channel 0: bytes to and from the agent's 127.0.0.1:15000; channel 1: the kubelet's error text
/// </code>
/// The agent pod runs with the node's network, so its loopback admin API is the pod's port 15000.
/// The first WebSocket is opened before returning, so "no pod", "not allowed" and "no such port"
/// surface as one clear line instead of a broken HTTP connection later.
/// </summary>
internal sealed class PodPortForward : IAsyncDisposable
{
    public const string Namespace = "weft-system";
    public const string AgentSelector = "app.kubernetes.io/name=weft,app.kubernetes.io/component=agent";
    public const int AdminPort = 15000;

    private const string RoleHint = "bind the weft-cli Role in weft-system to your user (see daemonset/rbac.yaml: kubectl -n weft-system create rolebinding weft-cli-$USER --role weft-cli --user $USER)";

    private readonly IKubernetes _kube;
    private readonly bool _ownsClient;
    private readonly string _namespace;
    private readonly int _port;
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<Task> _bridges = [];
    private WebSocket? _spare;
    private Task _acceptLoop = Task.CompletedTask;

    private PodPortForward(IKubernetes kube, bool ownsClient, string node, string ns, string pod, int port)
    {
        _kube = kube;
        _ownsClient = ownsClient;
        Node = node;
        _namespace = ns;
        Pod = pod;
        _port = port;
        _listener = new TcpListener(IPAddress.Loopback, 0);
    }

    public string Node { get; }

    public string Pod { get; }

    /// <summary>host:port of the local end; point an <see cref="AdminClient"/> at it.</summary>
    public string Address => $"127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";

    /// <summary>What the kubelet or API server last said went wrong on a forwarded connection, if anything.</summary>
    public string? LastError { get; private set; }

    /// <summary>The kubeconfig --node uses: --kubeconfig, else the first existing file of $KUBECONFIG, else ~/.kube/config.</summary>
    public static string? FindKubeconfig(string? explicitPath)
    {
        if (explicitPath is not null)
        {
            return File.Exists(explicitPath) ? explicitPath : throw new AdminUnreachableException($"--kubeconfig {explicitPath}: no such file");
        }

        var env = Environment.GetEnvironmentVariable("KUBECONFIG");
        if (!string.IsNullOrEmpty(env))
        {
            return env.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries).FirstOrDefault(File.Exists);
        }

        var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var path = Path.Combine(home, ".kube", "config");
        return File.Exists(path) ? path : null;
    }

    /// <summary>Finds the agent pod on <paramref name="node"/> and opens the first forwarded connection; every failure is an <see cref="AdminUnreachableException"/> with one line.</summary>
    public static async Task<PodPortForward> OpenAsync(string node, string? kubeconfig, CancellationToken cancellationToken)
    {
        var (kube, host) = Connect(kubeconfig, "--node", "or run weft on that node, or use --admin HOST:PORT");
        string pod;
        try
        {
            pod = await FindAgentPodAsync(kube, node, host, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            kube.Dispose();
            throw;
        }

        // from here the forward owns the client: a failed start disposes both
        return await StartAsync(new PodPortForward(kube, ownsClient: true, node, Namespace, pod, AdminPort), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Port <paramref name="port"/> of pod <paramref name="ns"/>/<paramref name="pod"/> (running on <paramref name="node"/>), over a client the caller keeps.</summary>
    public static Task<PodPortForward> OpenAsync(IKubernetes kube, string node, string ns, string pod, int port, CancellationToken cancellationToken) =>
        StartAsync(new PodPortForward(kube, ownsClient: false, node, ns, pod, port), cancellationToken);

    private static async Task<PodPortForward> StartAsync(PodPortForward forward, CancellationToken cancellationToken)
    {
        try
        {
            forward._spare = await forward.ConnectAsync(cancellationToken).ConfigureAwait(false);
            forward._listener.Start();
            forward._acceptLoop = Task.Run(forward.AcceptLoopAsync, CancellationToken.None);
            return forward;
        }
        catch
        {
            await forward.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>A client from the kubeconfig <see cref="FindKubeconfig"/> picks; every failure is one line naming <paramref name="option"/>.</summary>
    public static (IKubernetes Client, string? Host) Connect(string? kubeconfig, string option, string otherwise)
    {
        var path = FindKubeconfig(kubeconfig)
            ?? throw new AdminUnreachableException($"{option} needs a kubeconfig and none was found (--kubeconfig FILE, $KUBECONFIG, ~/.kube/config); {otherwise}.");
        KubernetesClientConfiguration config;
        try
        {
            config = Weft.Inventory.KubeconfigFile.BuildConfig(path);
        }
        catch (Exception e) when (e is k8s.Exceptions.KubeConfigException or IOException or ArgumentException or InvalidOperationException or YamlDotNet.Core.YamlException)
        {
            throw new AdminUnreachableException($"cannot use kubeconfig {path}: {FirstLine(e.Message)}", e);
        }

        return (new k8s.Kubernetes(config), config.Host);
    }

    private static async Task<string> FindAgentPodAsync(IKubernetes kube, string node, string? host, CancellationToken cancellationToken)
    {
        k8s.Models.V1PodList pods;
        try
        {
            pods = await kube.CoreV1.ListNamespacedPodAsync(Namespace, fieldSelector: $"spec.nodeName={node}",
                labelSelector: AgentSelector, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (HttpOperationException e) when (e.Response?.StatusCode is HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized)
        {
            throw new AdminUnreachableException($"the Kubernetes API refused to list pods in {Namespace} ({(int)e.Response.StatusCode}): {RoleHint}.", e);
        }
        catch (HttpOperationException e)
        {
            throw new AdminUnreachableException($"the Kubernetes API at {host} answered {(int?)e.Response?.StatusCode} listing agent pods: {FirstLine(e.Response?.Content ?? e.Message)}", e);
        }
        catch (HttpRequestException e)
        {
            throw new AdminUnreachableException($"cannot reach the Kubernetes API at {host}: {FirstLine(e.InnerException?.Message ?? e.Message)}", e);
        }

        // A rolling update can leave a terminating agent next to its successor: prefer the running one.
        var agent = pods.Items
            .Where(p => p.Metadata?.DeletionTimestamp is null)
            .OrderByDescending(p => p.Status?.Phase == "Running")
            .FirstOrDefault();
        return agent?.Metadata?.Name
            ?? throw new AdminUnreachableException($"no Weft agent pod on node '{node}' (namespace {Namespace}, labels {AgentSelector}); check the node name with kubectl get nodes and the agent with kubectl -n {Namespace} get pods -o wide.");
    }

    private async Task<WebSocket> ConnectAsync(CancellationToken cancellationToken)
    {
        try
        {
            return await _kube.WebSocketNamespacedPodPortForwardAsync(Pod, _namespace, [_port],
                WebSocketProtocol.V4BinaryWebsocketProtocol, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (HttpOperationException e) when (e.Response?.StatusCode is HttpStatusCode.Forbidden or HttpStatusCode.Unauthorized)
        {
            throw new AdminUnreachableException($"the Kubernetes API refused the port-forward to {_namespace}/{Pod} ({(int)e.Response.StatusCode}): {RoleHint}.", e);
        }
        catch (HttpOperationException e)
        {
            throw new AdminUnreachableException($"port-forward to {_namespace}/{Pod} on node '{Node}' failed ({(int?)e.Response?.StatusCode}): {FirstLine(e.Body is k8s.Models.V1Status s ? s.Message ?? "" : e.Response?.Content ?? e.Message)}", e);
        }
        catch (Exception e) when (e is WebSocketException or HttpRequestException)
        {
            // The WebSocket handshake failing on a non-101 answer says the status only in its message.
            if (e.Message.Contains("403", StringComparison.Ordinal) || e.Message.Contains("401", StringComparison.Ordinal))
            {
                throw new AdminUnreachableException($"the Kubernetes API refused the port-forward to {_namespace}/{Pod} (403): {RoleHint}.", e);
            }

            throw new AdminUnreachableException($"port-forward to {_namespace}/{Pod} on node '{Node}' failed: {FirstLine(e.InnerException?.Message ?? e.Message)}.", e);
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try
            {
                client = await _listener.AcceptTcpClientAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                return;
            }

            lock (_bridges)
            {
                _bridges.RemoveAll(b => b.IsCompleted);
                _bridges.Add(Task.Run(() => BridgeAsync(client), CancellationToken.None));
            }
        }
    }

    /// <summary>One local connection ⇄ one port-forward WebSocket, until either side ends.</summary>
    private async Task BridgeAsync(TcpClient client)
    {
        using var _ = client;
        WebSocket? socket = Interlocked.Exchange(ref _spare, null);
        try
        {
            socket ??= await ConnectAsync(_stop.Token).ConfigureAwait(false);
            using var demuxer = new StreamDemuxer(socket, StreamType.PortForward, ownsSocket: true);
            // Streams before Start: the demuxer drops what arrives for a channel nobody asked for yet.
            using var remote = demuxer.GetStream((byte?)0, (byte?)0);
            using var errors = demuxer.GetStream((byte?)1, null);
            demuxer.Start();
            var local = client.GetStream();
            using var done = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            var up = CopyAsync(local, remote, done.Token);
            // The demuxer's streams block a thread in Read whatever the API (ReadAsync included): give each its
            // own thread, or two of them per connection starve the thread pool on a small machine.
            var down = Task.Factory.StartNew(() => CopyBlocking(remote, local),
                CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            var error = Task.Factory.StartNew(() => ReadErrorBlocking(errors),
                CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            await Task.WhenAny(up, down, error).ConfigureAwait(false);
            if (!up.IsCompleted)
            {
                // The pod's side ended: when the kubelet could not connect, its reason is on channel 1. Keep it
                // before the local connection closes, so the command reports it instead of "connection closed".
                await Task.WhenAny(error, Task.Delay(TimeSpan.FromMilliseconds(500), done.Token)).ConfigureAwait(false);
            }

            if (error.IsCompletedSuccessfully && error.Result is { Length: > 0 } text)
            {
                LastError = text;
            }

            // Whichever side ended first, the other has nothing left to say: let the agent's answer drain, then stop.
            if (up.IsCompleted)
            {
                await Task.WhenAny(down, Task.Delay(TimeSpan.FromSeconds(5), done.Token)).ConfigureAwait(false);
            }

            await done.CancelAsync().ConfigureAwait(false);
        }
        catch (AdminUnreachableException e)
        {
            LastError = e.Message;
        }
        catch (Exception e) when (e is IOException or SocketException or WebSocketException or ObjectDisposedException or OperationCanceledException)
        {
            // the user's command ended or the API server closed the stream: the admin client reports what it saw
        }
    }

    private static async Task CopyAsync(Stream from, Stream to, CancellationToken cancellationToken)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            int n;
            while ((n = await from.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
            {
                await to.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                await to.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or SocketException or WebSocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }

    private static void CopyBlocking(Stream from, Stream to)
    {
        var buffer = new byte[16 * 1024];
        try
        {
            int n;
            while ((n = from.Read(buffer)) > 0)
            {
                to.Write(buffer, 0, n);
                to.Flush();
            }
        }
        catch (Exception e) when (e is IOException or SocketException or WebSocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }

    private static string ReadErrorBlocking(Stream errors)
    {
        var text = new StringBuilder();
        var buffer = new byte[1024];
        try
        {
            int n;
            while ((n = errors.Read(buffer)) > 0)
            {
                text.Append(Encoding.UTF8.GetString(buffer, 0, n));
            }
        }
        catch (Exception e) when (e is IOException or WebSocketException or ObjectDisposedException or OperationCanceledException)
        {
        }

        return text.ToString().Trim();
    }

    private static string FirstLine(string text) => text.Split('\n')[0].Trim();

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        _listener.Stop();
        await _acceptLoop.ConfigureAwait(false);
        Task[] bridges;
        lock (_bridges)
        {
            bridges = [.. _bridges];
        }

        await Task.WhenAll(bridges).ConfigureAwait(false);
        _spare?.Dispose();
        if (_ownsClient)
        {
            _kube.Dispose();
        }

        _stop.Dispose();
    }
}
