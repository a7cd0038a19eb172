using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Runtime.CompilerServices;
using System.Security.Authentication;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Yarp.ReverseProxy.Forwarder;
using Yarp.ReverseProxy.Transforms;

namespace Weft.Gateway;

/// <summary>Addresses and limits of <see cref="GatewayServer"/>.</summary>
internal sealed record GatewayOptions
{
    /// <summary>Plain listener (HTTP/1.1, and h2c: <see cref="H2cPriorKnowledge"/>), or null for none.</summary>
    public IPEndPoint? Http { get; init; }

    /// <summary>TLS listener (HTTP/1.1 and HTTP/2 by ALPN, certificate by SNI), or null for none.</summary>
    public IPEndPoint? Https { get; init; }

    /// <summary>
    /// Plain listeners of one Gateway each ("namespace/name" to its address): what arrives there is routed with
    /// that Gateway's HTTP listeners' routes only, so two Gateways can answer the same host and path differently. Every
    /// Gateway is still served on <see cref="Http"/> too, all together, as without this.
    /// </summary>
    public IReadOnlyDictionary<string, IPEndPoint> GatewayHttp { get; init; } = new Dictionary<string, IPEndPoint>();

    /// <summary>
    /// TLS listeners of one Gateway each, as <see cref="GatewayHttp"/> for its HTTPS listeners: the certificate is chosen
    /// by SNI among that Gateway's certificates only, and requests are routed with its HTTPS listeners' routes only.
    /// Every Gateway is still served on <see cref="Https"/> too.
    /// </summary>
    public IReadOnlyDictionary<string, IPEndPoint> GatewayHttps { get; init; } = new Dictionary<string, IPEndPoint>();

    /// <summary>Plain /metrics, /routes, /healthz, or null for none.</summary>
    public IPEndPoint? Admin { get; init; }

    /// <summary>Client connections held at once (both listeners); further ones are closed as they are accepted, and counted.</summary>
    public int MaxConnections { get; init; } = 10_000;

    /// <summary>
    /// Requests being forwarded at once, WebSockets and gRPC streams included: each may hold a connection to a backend
    /// (and a descriptor) for as long as it lasts, and an HTTP/2 client opens up to 100 per connection. Past it a
    /// request gets 503 (UO) at once and is counted, as Envoy's circuit breaker answers.
    /// </summary>
    public int MaxRequestsInFlight { get; init; } = 10_000;

    /// <summary>All request headers of one request together; past it the client gets 431.</summary>
    public int MaxRequestHeadersBytes { get; init; } = 32 * 1024;

    /// <summary>A client that has not sent its whole request head by then is disconnected (slowloris).</summary>
    public TimeSpan RequestHeadersTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>How long an endpoint gets no request after a connection to it failed, or after <see cref="Consecutive5xxToEject"/> 5xx answers.</summary>
    public TimeSpan EjectionTime { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>An endpoint that answers this many 5xx in a row is ejected (Envoy's consecutive_5xx default); 0: never for 5xx.</summary>
    public int Consecutive5xxToEject { get; init; } = 5;

    /// <summary>A request body that arrives slower than this (bytes/s, after <see cref="MinDataRateGrace"/>) closes the connection; a gRPC or upgraded stream is exempt.</summary>
    public double MinRequestBodyBytesPerSecond { get; init; } = 240;

    /// <summary>A client that reads the response slower than this (bytes/s, after the grace) is disconnected.</summary>
    public double MinResponseBytesPerSecond { get; init; } = 240;

    /// <summary>How long a slow body may start before the minimum rates apply.</summary>
    public TimeSpan MinDataRateGrace { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// A response write the client does not take within this (it stopped reading) aborts the request, as nginx's
    /// send_timeout (the same 60 s); the minimum response rate alone would let it hold for hours.
    /// </summary>
    public TimeSpan ResponseSendTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>An idle keep-alive client connection is closed after this.</summary>
    public TimeSpan KeepAliveTimeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>A WebSocket or gRPC stream with no byte either way for this long is closed (YARP's default of 100 s would cut quiet WebSockets).</summary>
    public TimeSpan StreamIdleTimeout { get; init; } = TimeSpan.FromHours(1);

    /// <summary>"stdout", a file path, or null for no access log.</summary>
    public string? AccessLog { get; init; }

    /// <summary>Export a span per request over OTLP; null: no spans (the traceparent is still started and passed on).</summary>
    public GatewayTracingOptions? Tracing { get; init; }

    /// <summary>A backend that does not accept the connection by then counts as down.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// Passive health: an endpoint a connection failed to, or that answered <c>consecutive5xx</c> 5xx in a row, is
/// skipped for <see cref="GatewayOptions.EjectionTime"/>. Holds at most one entry per endpoint of the route
/// table (the table bounds it), and forgets expired ones and runs broken by a good answer.
/// </summary>
internal sealed class EndpointHealth(TimeSpan ejectionTime, int consecutive5xx = 0)
{
    private readonly ConcurrentDictionary<IPEndPoint, long> _ejectedUntil = new();
    private readonly ConcurrentDictionary<IPEndPoint, StrongBox<int>> _failures = new();

    /// <summary>Counts an answer of <paramref name="endpoint"/>; true when this 5xx ejected it.</summary>
    public bool Answered(IPEndPoint endpoint, int statusCode)
    {
        if (consecutive5xx <= 0)
        {
            return false;
        }

        if (statusCode < 500)
        {
            // The common case reads only: a healthy endpoint has no entry.
            if (!_failures.IsEmpty)
            {
                _failures.TryRemove(endpoint, out _);
            }

            return false;
        }

        var run = _failures.GetOrAdd(endpoint, static _ => new StrongBox<int>());
        if (Interlocked.Increment(ref run.Value) < consecutive5xx)
        {
            return false;
        }

        _failures.TryRemove(endpoint, out _);
        Eject(endpoint);
        return true;
    }

    public bool IsEjected(IPEndPoint endpoint)
    {
        if (!_ejectedUntil.TryGetValue(endpoint, out var until))
        {
            return false;
        }

        if (Environment.TickCount64 < until)
        {
            return true;
        }

        _ejectedUntil.TryRemove(KeyValuePair.Create(endpoint, until));
        return false;
    }

    public void Eject(IPEndPoint endpoint) => _ejectedUntil[endpoint] = Environment.TickCount64 + (long)ejectionTime.TotalMilliseconds;
}

/// <summary>
/// The gateway on Kestrel: each request is matched against the current <see cref="RouteTable"/> (by listener,
/// host and the normalized path) and answered by the route (redirect, 500 for an invalid backend, 503 when no
/// endpoint is up) or forwarded by YARP's <see cref="IHttpForwarder"/> to one ready endpoint.
/// <code>
///   client ─► Kestrel (HTTP/1.1; TLS by SNI with HTTP/2 by ALPN) ─► normalize path ─► RouteTable.Match
///        ─► filters ─► weighted backend ─► round robin over endpoints not ejected ─► IHttpForwarder ─► endpoint
/// </code>
/// </summary>
internal sealed partial class GatewayServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly WebApplication? _admin;
    private readonly IAsyncDisposable _handler;

    private GatewayServer(WebApplication app, WebApplication? admin, IAsyncDisposable handler, IPEndPoint? http, IPEndPoint? https, IPEndPoint? adminEndpoint,
        IReadOnlyDictionary<string, IPEndPoint> gatewayHttp, IReadOnlyDictionary<string, IPEndPoint> gatewayHttps)
    {
        GatewayHttpEndpoints = gatewayHttp;
        GatewayHttpsEndpoints = gatewayHttps;
        _app = app;
        _admin = admin;
        _handler = handler;
        HttpEndpoint = http;
        HttpsEndpoint = https;
        AdminEndpoint = adminEndpoint;
    }

    /// <summary>The bound addresses (port 0 in the options: the port the kernel chose).</summary>
    public IPEndPoint? HttpEndpoint { get; }

    /// <summary>The connection item that names the Gateway a connection to one of <see cref="GatewayOptions.GatewayHttp"/> or <see cref="GatewayOptions.GatewayHttps"/> came to.</summary>
    private const string GatewayItem = "weft.gateway";

    public IPEndPoint? HttpsEndpoint { get; }

    /// <summary>Where each Gateway of <see cref="GatewayOptions.GatewayHttp"/> is served (the port the kernel picked for port 0).</summary>
    public IReadOnlyDictionary<string, IPEndPoint> GatewayHttpEndpoints { get; }

    /// <summary>Where each Gateway of <see cref="GatewayOptions.GatewayHttps"/> is served.</summary>
    public IReadOnlyDictionary<string, IPEndPoint> GatewayHttpsEndpoints { get; }

    public IPEndPoint? AdminEndpoint { get; }

    /// <param name="routes">The table to serve, read once per request and per TLS handshake.</param>
    /// <param name="configError">Why the configuration as it is now is not what is served, or null.</param>
    /// <param name="mesh">The gateway's mesh membership: meshed endpoints are reached over HBONE; null, all in plaintext.</param>
    public static async Task<GatewayServer> StartAsync(GatewayOptions options, Func<RouteTable> routes, GatewayMetrics metrics, Func<string?>? configError = null,
        CancellationToken cancellationToken = default, GatewayMesh? mesh = null)
    {
        ListenOptions? httpListen = null, httpsListen = null, adminListen = null;
        var gatewayListens = new Dictionary<string, ListenOptions>(StringComparer.Ordinal);
        var gatewayTlsListens = new Dictionary<string, ListenOptions>(StringComparer.Ordinal);
        IReadOnlyList<GatewayAddress> ownAddresses = [];
        var connections = new ConnectionLimiter(options.MaxConnections, metrics);

        // h2c on a plain listener goes through an HTTP/2-only twin's pipeline (H2cPriorKnowledge says why).
        void PlainListener(KestrelServerOptions kestrel, IPEndPoint endpoint, Action<ListenOptions> bound, string? gateway)
        {
            var h2c = new H2cPriorKnowledge(options.KeepAliveTimeout, options.RequestHeadersTimeout, metrics);
            kestrel.Listen(endpoint, listen =>
            {
                bound(listen);
                listen.Protocols = HttpProtocols.Http1;
                listen.Use(connections.Limit);
                if (gateway is not null)
                {
                    // The request handler reads which Gateway the connection came to from its items.
                    listen.Use(Tag(gateway));
                }

                listen.Use(h2c.Sniff);
            });
            kestrel.Listen(IPAddress.Loopback, 0, twin =>
            {
                twin.Protocols = HttpProtocols.Http2;
                twin.Use(connections.Limit);
                if (gateway is not null)
                {
                    twin.Use(Tag(gateway));
                }

                twin.Use(h2c.Capture);
            });
        }

        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxConcurrentUpgradedConnections = options.MaxConnections;
            kestrel.Limits.MaxRequestHeadersTotalSize = options.MaxRequestHeadersBytes;
            kestrel.Limits.RequestHeadersTimeout = options.RequestHeadersTimeout;
            kestrel.Limits.KeepAliveTimeout = options.KeepAliveTimeout;

            // Slowloris on the body or the response: set deliberately (they are Kestrel's defaults with a longer grace) and documented.
            kestrel.Limits.MinRequestBodyDataRate = new MinDataRate(options.MinRequestBodyBytesPerSecond, options.MinDataRateGrace);
            kestrel.Limits.MinResponseDataRate = new MinDataRate(options.MinResponseBytesPerSecond, options.MinDataRateGrace);

            // Bodies stream through to the backend; flow control bounds what one request buffers.
            kestrel.Limits.MaxRequestBodySize = null;
            if (options.Http is { } http)
            {
                PlainListener(kestrel, http, listen => httpListen = listen, null);
            }

            foreach (var (gateway, endpoint) in options.GatewayHttp)
            {
                PlainListener(kestrel, endpoint, listen => gatewayListens[gateway] = listen, gateway);
            }

            foreach (var (gateway, endpoint) in options.GatewayHttps)
            {
                kestrel.Listen(endpoint, listen =>
                {
                    gatewayTlsListens[gateway] = listen;
                    listen.Protocols = HttpProtocols.Http1AndHttp2;
                    listen.Use(connections.Limit);
                    listen.Use(Tag(gateway));
                    listen.UseHttps(Tls(() => routes().GatewayCertificates.GetValueOrDefault(gateway) ?? CertificateSet.Empty));
                });
            }

            if (options.Https is { } https)
            {
                kestrel.Listen(https, listen =>
                {
                    httpsListen = listen;
                    listen.Protocols = HttpProtocols.Http1AndHttp2;

                    // Before TLS: a connection that never finishes its handshake counts too.
                    listen.Use(connections.Limit);
                    listen.UseHttps(Tls(() => routes().Certificates));
                });
            }
        });

        // A certificate by SNI from the certificates of the table at handshake time: a rotated Secret serves the next handshake.
        TlsHandshakeCallbackOptions Tls(Func<CertificateSet> certificates) => new()
        {
            OnConnection = context =>
            {
                var certificate = certificates().Select(context.ClientHelloInfo.ServerName);
                if (certificate is null)
                {
                    metrics.TlsRefused();
                    throw new AuthenticationException($"no certificate for server name '{context.ClientHelloInfo.ServerName}'");
                }

                return ValueTask.FromResult(new SslServerAuthenticationOptions
                {
                    ServerCertificateContext = certificate,
                    ApplicationProtocols = [SslApplicationProtocol.Http2, SslApplicationProtocol.Http11],
                    EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                });
            },
        };

        static Func<Microsoft.AspNetCore.Connections.ConnectionDelegate, Microsoft.AspNetCore.Connections.ConnectionDelegate> Tag(string gateway) => next => connection =>
        {
            connection.Items[GatewayItem] = gateway;
            return next(connection);
        };
        builder.Services.AddHttpForwarder();
        var app = builder.Build();
        var accessLog = options.AccessLog is { } target ? AccessLog.Open(target, metrics) : null;
        var kestrelEnds = new KestrelConnectionEnds(app.Services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), metrics);
        var handler = new RequestHandler(app.Services.GetRequiredService<IHttpForwarder>(), routes, metrics, options, accessLog, mesh, kestrelEnds);
        app.Run(handler.HandleAsync);

        WebApplication? admin = null;
        if (options.Admin is { } adminEndpoint)
        {
            var adminBuilder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
            adminBuilder.WebHost.UseKestrelCore().ConfigureKestrel(kestrel =>
            {
                kestrel.AddServerHeader = false;
                kestrel.Limits.MaxConcurrentConnections = 64;
                kestrel.Listen(adminEndpoint, listen =>
                {
                    adminListen = listen;
                    listen.Protocols = HttpProtocols.Http1;
                });
            });
            admin = adminBuilder.Build();
            admin.Run(context => ServeAdminAsync(context, routes, metrics, configError, ownAddresses));
        }

        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
            ownAddresses = GatewayAddress.Of(
                gatewayListens.ToDictionary(l => l.Key, l => l.Value.IPEndPoint!, StringComparer.Ordinal),
                gatewayTlsListens.ToDictionary(l => l.Key, l => l.Value.IPEndPoint!, StringComparer.Ordinal));
            if (admin is not null)
            {
                await admin.StartAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        catch
        {
            await handler.DisposeAsync().ConfigureAwait(false);
            await app.DisposeAsync().ConfigureAwait(false);
            if (admin is not null)
            {
                await admin.DisposeAsync().ConfigureAwait(false);
            }

            throw;
        }

        var server = new GatewayServer(app, admin, handler, httpListen?.IPEndPoint, httpsListen?.IPEndPoint, adminListen?.IPEndPoint,
            gatewayListens.ToDictionary(l => l.Key, l => l.Value.IPEndPoint!, StringComparer.Ordinal),
            gatewayTlsListens.ToDictionary(l => l.Key, l => l.Value.IPEndPoint!, StringComparer.Ordinal));
        Log.Info("gateway", "serving"
            + (server.HttpEndpoint is { } h ? $" http://{h}" : "")
            + (server.HttpsEndpoint is { } s ? $" https://{s}" : "")
            + string.Concat(ownAddresses.Select(g => $", Gateway {g.Gateway} on"
                + (g.Http is { } gh ? $" http://{gh}" : "") + (g.Https is { } gs ? $" https://{gs}" : "")))
            + (server.AdminEndpoint is { } a ? $", metrics on http://{a}/metrics" : ""));
        return server;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
        if (_admin is not null)
        {
            await _admin.StopAsync().ConfigureAwait(false);
            await _admin.DisposeAsync().ConfigureAwait(false);
        }

        await _handler.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>"//a///b" is "/a/b": the path routes are matched on and forwarded with (Kestrel already removed "." and ".." segments, "%2e" included).</summary>
    internal static string NormalizePath(string? path)
    {
        if (string.IsNullOrEmpty(path))
        {
            return "/";
        }

        return path.Contains("//", StringComparison.Ordinal) ? RepeatedSlashes().Replace(path, "/") : path;
    }

    [GeneratedRegex("/{2,}")]
    private static partial Regex RepeatedSlashes();

    private static async Task ServeAdminAsync(HttpContext context, Func<RouteTable> routes, GatewayMetrics metrics, Func<string?>? configError, IReadOnlyList<GatewayAddress> ownAddresses)
    {
        var error = configError?.Invoke();
        switch (context.Request.Path.Value)
        {
            case "/metrics":
                metrics.ConfigStale(error is not null);
                context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
                await context.Response.WriteAsync(await metrics.ExportAsync().ConfigureAwait(false)).ConfigureAwait(false);
                break;
            case "/routes" when context.Request.Query["format"] == "json":
                context.Response.ContentType = "application/json";
                await context.Response.Body.WriteAsync(RouteTableJson.Serialize(routes(), error, ownAddresses)).ConfigureAwait(false);
                break;
            case "/routes":
                context.Response.ContentType = "text/plain; charset=utf-8";
                await context.Response.WriteAsync(Describe(routes(), error, ownAddresses)).ConfigureAwait(false);
                break;
            case "/healthz":
                await context.Response.WriteAsync("ok\n").ConfigureAwait(false);
                break;
            default:
                context.Response.StatusCode = StatusCodes.Status404NotFound;
                break;
        }
    }

    /// <summary>Which route serves which host and path, in the order they are tried; then what each Gateway's own address serves.</summary>
    internal static string Describe(RouteTable table, string? configError, IReadOnlyList<GatewayAddress>? ownAddresses = null)
    {
        var text = new StringBuilder();
        text.Append("version ").Append(table.Version).Append('\n');
        if (configError is not null)
        {
            text.Append("config error (serving the last good version): ").Append(configError).Append('\n');
        }

        DescribeRoutes(text, table.Http, table.Https);
        foreach (var own in ownAddresses ?? [])
        {
            text.Append("gateway ").Append(own.Gateway).Append(" on").Append(own.Http is { } h ? $" http://{h}" : "").Append(own.Https is { } s ? $" https://{s}" : "").Append('\n');
            DescribeRoutes(text, own.Http is null ? null : table.GatewayHttp.GetValueOrDefault(own.Gateway), own.Https is null ? null : table.GatewayHttps.GetValueOrDefault(own.Gateway));
        }

        foreach (var warning in table.Warnings)
        {
            text.Append("warning: ").Append(warning).Append('\n');
        }

        return text.ToString();
    }

    private static void DescribeRoutes(StringBuilder text, ListenerRoutes? http, ListenerRoutes? https)
    {
        foreach (var (name, listener) in new[] { ("http", http), ("https", https) })
        {
            if (listener is null)
            {
                continue;
            }

            foreach (var host in listener.Hosts)
            {
                foreach (var route in host.Routes)
                {
                    text.Append(name).Append('\t').Append(host.Host).Append('\t').Append(route).Append('\t').Append(route.Source).Append('\t')
                        .Append(route.Action.Timeouts?.ToString() ?? "-").Append('\t')
                        .Append(route.Action.Redirect is { } r ? $"redirect {r.StatusCode}" : string.Join(", ", route.Action.Backends)).Append('\n');
                }
            }

            if (listener.DefaultRoute is { } fallback)
            {
                text.Append(name).Append("\t(default)\t\t").Append(fallback.Source).Append("\t-\t").Append(string.Join(", ", fallback.Action.Backends)).Append('\n');
            }
        }
    }

    /// <summary>Holds client connections to <see cref="GatewayOptions.MaxConnections"/>; one past it is closed at once and counted.</summary>
    private sealed class ConnectionLimiter(int maximum, GatewayMetrics metrics)
    {
        private int _open;

        public Microsoft.AspNetCore.Connections.ConnectionDelegate Limit(Microsoft.AspNetCore.Connections.ConnectionDelegate next) => async connection =>
        {
            if (Interlocked.Increment(ref _open) > maximum)
            {
                Interlocked.Decrement(ref _open);
                metrics.ConnectionRefused();
                return;
            }

            metrics.ConnectionOpened();
            try
            {
                await next(connection).ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _open);
                metrics.ConnectionClosed();
            }
        };
    }

    private sealed partial class RequestHandler : IAsyncDisposable
    {
        private readonly IHttpForwarder _forwarder;
        private readonly Func<RouteTable> _routes;
        private readonly GatewayMetrics _metrics;
        private readonly EndpointHealth _health;
        private readonly HttpMessageInvoker _client;
        private readonly AccessLog? _accessLog;
        private readonly GatewayTracing? _tracing;
        private readonly int _consecutive5xx;
        private readonly TimeSpan _sendTimeout;
        private readonly KestrelConnectionEnds _kestrelEnds;
        private readonly bool _ownAddresses;
        private readonly int _maxInFlight;
        private int _inFlight;
        private readonly ForwarderRequestConfig _requestConfig = new()
        {
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionOrLower,
        };

        private readonly ForwarderRequestConfig _grpcConfig;
        private readonly ForwarderRequestConfig _streamConfig;

        // A Service port that says h2c gets every request but an upgrade over HTTP/2 with prior knowledge.
        private readonly ForwarderRequestConfig _h2cConfig = new()
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };

        public RequestHandler(IHttpForwarder forwarder, Func<RouteTable> routes, GatewayMetrics metrics, GatewayOptions options, AccessLog? accessLog, GatewayMesh? mesh, KestrelConnectionEnds kestrelEnds)
        {
            _kestrelEnds = kestrelEnds;
            _ownAddresses = options.GatewayHttp.Count + options.GatewayHttps.Count > 0;
            _sendTimeout = options.ResponseSendTimeout;
            _maxInFlight = options.MaxRequestsInFlight;
            _forwarder = forwarder;
            _routes = routes;
            _metrics = metrics;
            _accessLog = accessLog;
            _tracing = options.Tracing is { } tracing ? GatewayTracing.Start(tracing, metrics) : null;
            _health = new EndpointHealth(options.EjectionTime, options.Consecutive5xxToEject);
            _consecutive5xx = options.Consecutive5xxToEject;

            // gRPC needs HTTP/2 end to end (trailers); a plaintext backend is spoken to with prior knowledge (h2c).
            _grpcConfig = new ForwarderRequestConfig
            {
                Version = HttpVersion.Version20,
                VersionPolicy = HttpVersionPolicy.RequestVersionExact,
                ActivityTimeout = options.StreamIdleTimeout,
            };

            // WebSockets (HTTP/1.1 Upgrade, or RFC 8441 CONNECT which YARP turns into an Upgrade) go to the backend over HTTP/1.1.
            _streamConfig = _requestConfig with { ActivityTimeout = options.StreamIdleTimeout };
            _client = new HttpMessageInvoker(new SocketsHttpHandler
            {
                UseProxy = false,
                AllowAutoRedirect = false,
                AutomaticDecompression = DecompressionMethods.None,
                UseCookies = false,
                ConnectTimeout = options.ConnectTimeout,

                // HTTP/2 to a backend (gRPC, h2c ports): past the server's stream limit on one connection, open another
                // rather than queue a request behind streams that may stay open for as long as their application wants.
                EnableMultipleHttp2Connections = true,

                // The gateway writes traceparent itself (TraceContext): the handler must not add its own.
                ActivityHeadersPropagator = DistributedContextPropagator.CreateNoOutputPropagator(),

                // In the mesh, each new connection is plaintext or an HBONE stream, as the inventory says of its endpoint.
                ConnectCallback = mesh is null ? null : mesh.ConnectAsync,
            });
        }

        public async ValueTask DisposeAsync()
        {
            _client.Dispose();
            _tracing?.Dispose();
            _kestrelEnds.Dispose();
            if (_accessLog is not null)
            {
                await _accessLog.DisposeAsync().ConfigureAwait(false);
            }
        }

        public async Task HandleAsync(HttpContext context)
        {
            var started = Stopwatch.GetTimestamp();
            Backend? backend = null;
            Route? route = null;
            IPEndPoint? endpoint = null;
            var flags = "-";
            var request = context.Request;
            var grpc = request.ContentType is { } contentType && contentType.StartsWith("application/grpc", StringComparison.OrdinalIgnoreCase) && HttpProtocol.IsHttp2(request.Protocol);
            var path = NormalizePath(request.Path.Value);
            var span = _tracing is null ? null : GatewayTracing.StartSpan(request);
            ForwardTransformer? transformer = null;
            var forwarding = false;
            try
            {
                var host = RouteCompiler.NormalizeHost(request.Host.Host) ?? "";
                var table = _routes();
                // Only when some Gateway has an address of its own: Kestrel makes a connection's items on first use (about
                // 100 bytes a connection, kept while it is open).
                var listener = _ownAddresses && context.Features.Get<IConnectionItemsFeature>()?.Items.TryGetValue(GatewayItem, out var gateway) == true
                    ? (request.IsHttps ? table.GatewayHttps : table.GatewayHttp).GetValueOrDefault((string)gateway!) ?? ListenerRoutes.Empty
                    : request.IsHttps ? table.Https : table.Http;
                route = listener.Match(host, request, path);
                if (route is null)
                {
                    flags = "NR";
                    context.Response.StatusCode = StatusCodes.Status404NotFound;
                    return;
                }

                if (route.Action.Redirect is { } redirect)
                {
                    Redirect(context, redirect, route.Path, host, path);
                    return;
                }

                backend = route.Action.PickBackend();
                if (backend is null || backend.Invalid is not null)
                {
                    // Gateway API: a rule without a valid backend answers 500.
                    context.Response.StatusCode = StatusCodes.Status500InternalServerError;
                    return;
                }

                endpoint = backend.NextEndpoint(_health.IsEjected, out var destination);
                if (endpoint is null)
                {
                    flags = "UH";
                    context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                    return;
                }

                forwarding = Interlocked.Increment(ref _inFlight) <= _maxInFlight;
                if (!forwarding)
                {
                    Interlocked.Decrement(ref _inFlight);
                    _metrics.RequestRefused();
                    flags = "UO";
                    context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                    return;
                }

                var config = backend.H2c ? _h2cConfig : _requestConfig;
                if (grpc || context.Features.Get<IHttpExtendedConnectFeature>()?.IsExtendedConnect == true || context.Features.Get<IHttpUpgradeFeature>()?.IsUpgradableRequest == true)
                {
                    // A stream may idle for as long as its application wants: the minimum body rate is for uploads.
                    ExemptFromMinimumBodyRate(context);
                    config = grpc ? _grpcConfig : _streamConfig;
                }

                context.Response.Body = new ResponseSendTimeout(context.Response.Body, context, _sendTimeout, _metrics);

                // The rule's timeouts (HTTPRoute timeouts.request, timeouts.backendRequest): a timer only for routes that have them.
                using var deadline = route.Action.Timeouts is { } timeouts ? new ForwardDeadline(timeouts, context.RequestAborted) : null;
                transformer = new ForwardTransformer(route, path, span, deadline);
                var error = await _forwarder.SendAsync(context, destination!, _client, config, transformer, deadline?.Token ?? CancellationToken.None).ConfigureAwait(false);
                if (error != ForwarderError.None && deadline is { TimedOut: true })
                {
                    // The forward was stopped, which let go of the backend (its connection or stream is closed). Nothing
                    // sent yet: 504. A response already under way cannot become one: the forwarder cut it (HTTP/2: the
                    // stream reset; HTTP/1.1: the connection aborted) so the client cannot take it for a whole one. An
                    // upstream timeout either way (Envoy's UT); it ejects nothing.
                    flags = "UT";
                    if (!context.Response.HasStarted)
                    {
                        context.Response.Clear();
                        context.Response.StatusCode = StatusCodes.Status504GatewayTimeout;
                    }
                }
                else if (error == ForwarderError.None)
                {
                    if (_health.Answered(endpoint, context.Response.StatusCode))
                    {
                        _metrics.Ejected("5xx");
                        Log.Warn("gateway", $"endpoint {endpoint} of {backend.Name} ejected for a while: it answered 5xx {_consecutive5xx} times in a row");
                    }
                }
                else
                {
                    var exception = context.GetForwarderErrorFeature()?.Exception;
                    if (error == ForwarderError.Request && MeshRefusal(exception) is { } meshFlags)
                    {
                        // The backend's agent answered, so the endpoint is up: a refusal ejects nothing.
                        flags = meshFlags.Flags;
                        if (!context.Response.HasStarted)
                        {
                            context.Response.StatusCode = meshFlags.Status;
                        }
                    }
                    else if (error == ForwarderError.Request && IsConnectFailure(exception))
                    {
                        _health.Eject(endpoint);
                        _metrics.Ejected("connect_failure");
                        Log.Warn("gateway", $"endpoint {endpoint} of {backend.Name} ejected for a while: {exception?.Message}");
                        flags = "UF";
                        if (!context.Response.HasStarted)
                        {
                            context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
                        }
                    }
                    else
                    {
                        flags = error is ForwarderError.RequestCanceled or ForwarderError.RequestBodyCanceled or ForwarderError.ResponseBodyCanceled ? "DC" : "UR";
                    }
                }
            }
            finally
            {
                if (forwarding)
                {
                    Interlocked.Decrement(ref _inFlight);
                }

                var milliseconds = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                _metrics.Request(backend, grpc ? "grpc" : "http", context.Response.StatusCode, flags, milliseconds);
                _accessLog?.Write(new AccessLogEntry(
                    DateTime.UtcNow, request.Method, request.Host.Value ?? "", path, request.Protocol, context.Response.StatusCode, milliseconds,
                    endpoint?.ToString(), route?.Source, backend?.Name, transformer?.SentTraceParent ?? (request.Headers.TraceParent.ToString() is { Length: > 0 } trace ? trace : null),
                    context.Connection.RemoteIpAddress?.ToString(), flags));
                if (span is not null)
                {
                    GatewayTracing.End(span, route, backend, endpoint?.ToString(), context.Response.StatusCode, flags);
                }
            }
        }

        private static void ExemptFromMinimumBodyRate(HttpContext context)
        {
            if (context.Features.Get<Microsoft.AspNetCore.Server.Kestrel.Core.Features.IHttpMinRequestBodyDataRateFeature>() is { } rate)
            {
                try
                {
                    rate.MinDataRate = null;
                }
                catch (NotSupportedException)
                {
                    // HTTP/2 streams in some Kestrel versions: the connection-wide rate stays.
                }
            }
        }

        /// <summary>
        /// The mesh said no without the endpoint being down: its agent refused the gateway's CONNECT (403 when an
        /// AuthorizationPolicy denies the gateway, passed on to the client; any other refusal 503), or the gateway holds
        /// its limit of tunnels (503, UO).
        /// </summary>
        private static (int Status, string Flags)? MeshRefusal(Exception? exception)
        {
            for (var e = exception; e is not null; e = e.InnerException)
            {
                switch (e)
                {
                    case MeshRefusedException refused:
                        return refused.StatusCode == StatusCodes.Status403Forbidden ? (StatusCodes.Status403Forbidden, "DENY") : (StatusCodes.Status503ServiceUnavailable, "UF");
                    case Weft.Proxy.TunnelPoolFullException:
                        return (StatusCodes.Status503ServiceUnavailable, "UO");
                }
            }

            return null;
        }

        private static bool IsConnectFailure(Exception? exception)
        {
            for (var e = exception; e is not null; e = e.InnerException)
            {
                if (e is HttpRequestException { HttpRequestError: HttpRequestError.ConnectionError } or System.Net.Sockets.SocketException or TimeoutException or Weft.Proxy.TunnelException)
                {
                    return true;
                }
            }

            return false;
        }

        private static void Redirect(HttpContext context, RedirectAction redirect, PathMatch matched, string host, string path)
        {
            var request = context.Request;
            var scheme = redirect.Scheme ?? request.Scheme;

            // Gateway API: no port given: the scheme's well-known one when the scheme is given, else the request's.
            var port = redirect.Port ?? (redirect.Scheme is not null ? null : request.Host.Port ?? context.Connection.LocalPort);
            var showPort = port is { } p && !(p == 80 && scheme == "http") && !(p == 443 && scheme == "https");
            var target = redirect.Path?.Apply(path, matched) ?? path;
            var hostname = redirect.Hostname ?? host;
            context.Response.StatusCode = redirect.StatusCode;
            context.Response.Headers.Location = $"{scheme}://{hostname}{(showPort ? $":{port}" : "")}{new PathString(target).ToUriComponent()}{request.QueryString}";
        }
    }

    /// <summary>
    /// Per request: the route's path rewrite and request header edits, the client's Host, X-Forwarded-For/-Proto/-Host,
    /// a traceparent continued (new span id) or started; on the way back, the response header edits.
    /// </summary>
    private sealed partial class ForwardTransformer(Route route, string path, Activity? span, ForwardDeadline? deadline) : HttpTransformer
    {
        /// <summary>The traceparent the backend was sent (for the access log), once the request was transformed.</summary>
        public string? SentTraceParent { get; private set; }

        public override async ValueTask TransformRequestAsync(HttpContext httpContext, HttpRequestMessage proxyRequest, string destinationPrefix, CancellationToken cancellationToken)
        {
            var request = httpContext.Request;
            var headers = request.Headers;
            var client = httpContext.Connection.RemoteIpAddress?.ToString() ?? "unknown";
            var forwardedFor = headers["X-Forwarded-For"];
            var forwardedForValue = forwardedFor.Count == 0 ? client : $"{string.Join(", ", forwardedFor.ToArray())}, {client}";
            var continued = span?.HasRemoteParent ?? false;
            var traceParent = span is not null ? GatewayTracing.TraceParent(span) : TraceParent(headers.TraceParent.ToString(), out continued);
            SentTraceParent = traceParent;
            if (route.Action.RequestHeaders is { } modifier)
            {
                // The route's header edits see and may change the forwarded headers: they go through the client's headers first.
                headers["X-Forwarded-For"] = forwardedForValue;
                headers["X-Forwarded-Proto"] = request.Scheme;
                headers["X-Forwarded-Host"] = request.Host.Value;
                headers.TraceParent = traceParent;
                if (!continued)
                {
                    headers.Remove("tracestate");
                }

                modifier.Apply(headers);
                await base.TransformRequestAsync(httpContext, proxyRequest, destinationPrefix, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                // Written to the outgoing request only: X-Forwarded-* are names Kestrel has no slot for, and set on the
                // client's headers they would give every client connection a dictionary it keeps while idle.
                await base.TransformRequestAsync(httpContext, proxyRequest, destinationPrefix, cancellationToken).ConfigureAwait(false);
                var outgoing = proxyRequest.Headers;
                Replace(outgoing, "X-Forwarded-For", forwardedForValue);
                Replace(outgoing, "X-Forwarded-Proto", request.Scheme);
                Replace(outgoing, "X-Forwarded-Host", request.Host.Value);
                Replace(outgoing, "traceparent", traceParent);
                if (!continued)
                {
                    outgoing.Remove("tracestate");
                }
            }

            var target = route.Action.Rewrite?.Path?.Apply(path, route.Path) ?? path;
            proxyRequest.RequestUri = RequestUtilities.MakeDestinationAddress(destinationPrefix, new PathString(target), request.QueryString);

            // The backend sees the host the client asked for (as behind any ingress), unless URLRewrite changes it.
            proxyRequest.Headers.Host = route.Action.Rewrite?.Hostname ?? request.Host.Value;
        }

        private static void Replace(System.Net.Http.Headers.HttpRequestHeaders headers, string name, string? value)
        {
            headers.Remove(name);
            if (value is not null)
            {
                headers.TryAddWithoutValidation(name, value);
            }
        }

        public override async ValueTask<bool> TransformResponseAsync(HttpContext httpContext, HttpResponseMessage? proxyResponse, CancellationToken cancellationToken)
        {
            var result = await base.TransformResponseAsync(httpContext, proxyResponse, cancellationToken).ConfigureAwait(false);
            route.Action.ResponseHeaders?.Apply(httpContext.Response.Headers);

            // An accepted upgrade (101, or 200 to an HTTP/2 CONNECT) is a WebSocket from here: the rule's timeouts bounded its handshake.
            if (deadline is not null && proxyResponse is { } response
                && (response.StatusCode == HttpStatusCode.SwitchingProtocols || (response.StatusCode == HttpStatusCode.OK && response.RequestMessage?.Method == HttpMethod.Connect)))
            {
                deadline.Disarm();
            }

            return result;
        }

        /// <summary>W3C trace context: a valid parent keeps its trace id and flags with the gateway's span id; anything else starts a trace.</summary>
        internal static string TraceParent(string incoming, out bool continued)
        {
            var match = ValidTraceParent().Match(incoming);
            continued = match.Success && match.Groups["trace"].Value != new string('0', 32) && match.Groups["parent"].Value != new string('0', 16);
            var spanId = ActivitySpanId.CreateRandom().ToHexString();
            return continued
                ? $"00-{match.Groups["trace"].Value}-{spanId}-{match.Groups["flags"].Value}"
                : $"00-{ActivityTraceId.CreateRandom().ToHexString()}-{spanId}-01";
        }

        [GeneratedRegex("^00-(?<trace>[0-9a-f]{32})-(?<parent>[0-9a-f]{16})-(?<flags>[0-9a-f]{2})$")]
        private static partial Regex ValidTraceParent();
    }
}

/// <summary>A Gateway ("namespace/name") served on addresses of its own, as bound (the port the kernel picked for port 0).</summary>
internal sealed record GatewayAddress(string Gateway, IPEndPoint? Http, IPEndPoint? Https)
{
    public static IReadOnlyList<GatewayAddress> Of(IReadOnlyDictionary<string, IPEndPoint> http, IReadOnlyDictionary<string, IPEndPoint> https) =>
        [.. http.Keys.Union(https.Keys).Order(StringComparer.Ordinal).Select(g => new GatewayAddress(g, http.GetValueOrDefault(g), https.GetValueOrDefault(g)))];
}
