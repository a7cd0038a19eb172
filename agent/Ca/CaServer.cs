using System.Net;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using k8s;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Weft.Identity;
using Weft.Inventory;

namespace Weft.Ca;

/// <summary>How <c>weft ca serve</c> runs; the defaults suit one CA for a cluster.</summary>
internal sealed record CaServerOptions
{
    public required string TrustDomain { get; init; }

    /// <summary>Where the TLS gRPC service listens (port 0: any free port).</summary>
    public required IPEndPoint Listen { get; init; }

    /// <summary>Plain HTTP /metrics (Prometheus), or null for none.</summary>
    public IPEndPoint? MetricsListen { get; init; }

    /// <summary>The longest workload certificate the CA signs, and what it signs when the request names no validity.</summary>
    public TimeSpan MaxLifetime { get; init; } = SvidIssuer.DefaultLifetime;

    /// <summary>Largest request message accepted (gRPC refuses bigger ones with RESOURCE_EXHAUSTED before reading them whole).</summary>
    public int MaxRequestBytes { get; init; } = 64 * 1024;

    /// <summary>Largest PEM CSR accepted; an ECDSA CSR is under 1 KiB, an RSA-4096 one about 2 KiB.</summary>
    public int MaxCsrBytes { get; init; } = 8 * 1024;

    /// <summary>Requests being received or served at once; more get RESOURCE_EXHAUSTED at once.</summary>
    public int MaxConcurrentRequests { get; init; } = 64;

    /// <summary>TCP connections held at once (Kestrel closes further ones on accept).</summary>
    public int MaxConnections { get; init; } = 1024;

    /// <summary>DNS names in the CA's serving certificate, the names clients dial it by.</summary>
    public IReadOnlyList<string> ServerNames { get; init; } = ["localhost", "weft-ca", "weft-ca.weft-system", "weft-ca.weft-system.svc"];

    /// <summary>Lifetime of the CA's serving certificate; a new one is issued at half life, for new connections.</summary>
    public TimeSpan ServingCertificateLifetime { get; init; } = TimeSpan.FromHours(24);

    /// <summary>The CA's files, followed for a root rotation (null: the CA given at start signs until the end).</summary>
    public CaFiles? Files { get; init; }

    /// <summary>How often <see cref="Files"/> are read for changes.</summary>
    public TimeSpan ReloadInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Where the trust bundle is published for agents (null: nowhere).</summary>
    public ITrustBundlePublisher? Publisher { get; init; }
}

/// <summary>The CA as one request sees it: what signs, and the root its chain ends in. Replaced whole when the CA's files change.</summary>
internal sealed record CaSigner(CertificateAuthority Authority, X509Certificate2 Root)
{
    public static CaSigner Of(CertificateAuthority authority) => new(authority, FindRoot(authority));

    /// <summary>The bundle's root that the signer chains to (two roots of one name can sit in a bundle during a rotation).</summary>
    private static X509Certificate2 FindRoot(CertificateAuthority authority)
    {
        if (CertificateAuthority.IsSelfSigned(authority.Signer))
        {
            foreach (var root in authority.TrustBundle)
            {
                if (root.Thumbprint == authority.Signer.Thumbprint)
                {
                    return root;
                }
            }
        }

        using var chain = Weft.Identity.TrustBundle.ChainTo(authority.TrustBundle, authority.Intermediates);
        if (chain.Build(authority.Signer))
        {
            var top = chain.ChainElements[^1].Certificate.Thumbprint;
            foreach (var root in authority.TrustBundle)
            {
                if (root.Thumbprint == top)
                {
                    return root;
                }
            }
        }

        return authority.TrustBundle[0];
    }
}

/// <summary>What the gRPC service needs: the CA, the decision and the bookkeeping of outcomes.</summary>
internal sealed class CaService
{
    private volatile CaSigner _signer;

    public CaService(CertificateAuthority authority, CaServerOptions options, CertificateRequestAuthorizer authorizer, CaMetrics metrics)
    {
        Options = options;
        Authorizer = authorizer;
        Metrics = metrics;
        Issuer = new SvidIssuer(options.MaxLifetime);
        _signer = CaSigner.Of(authority);
        metrics.BundleRoots(authority.TrustBundle.Count);
    }

    /// <summary>What signs now; a request reads it once and signs and answers with that one.</summary>
    public CaSigner Signer => _signer;

    public CertificateAuthority Authority => _signer.Authority;

    public CaServerOptions Options { get; }

    public CertificateRequestAuthorizer Authorizer { get; }

    public CaMetrics Metrics { get; }

    public SvidIssuer Issuer { get; }

    /// <summary>The root the CA's chain ends in: what a response carries last.</summary>
    public X509Certificate2 Root => _signer.Root;

    /// <summary>Every line the CA logs about a request, as written (tests read what an operator would).</summary>
    public event Action<string>? Logged;

    /// <summary>Raised after <see cref="Replace"/>: the trust bundle is published anew.</summary>
    public event Action<CaSigner>? SignerChanged;

    /// <summary>Signs with <paramref name="next"/> from the next request on (requests under way finish with the one they read).</summary>
    public void Replace(CertificateAuthority next)
    {
        var signer = CaSigner.Of(next);
        _signer = signer;
        Metrics.BundleRoots(next.TrustBundle.Count);
        SignerChanged?.Invoke(signer);
    }

    public void Refuse(string reason, string detail)
    {
        Metrics.Refused(reason);
        var line = $"refused ({reason}): {detail}";
        Log.Warn("ca", line);
        Logged?.Invoke(line);
    }

    public void RecordIssued(NodeIdentity node, SpiffeId identity, X509Certificate2 leaf)
    {
        Metrics.Issued();
        var line = $"issued {identity} to node {node.NodeName}: serial {leaf.SerialNumber}, expires {leaf.NotAfter.ToUniversalTime():u}";
        Log.Info("ca", line);
        Logged?.Invoke(line);
    }
}

/// <summary>
/// The CA service on Kestrel: gRPC over TLS (HTTP/2 only, ALPN h2) with the CA's own serving certificate, a
/// client certificate asked of every caller but judged per request (so a caller without one, or with a foreign one,
/// gets PERMISSION_DENIED and a logged reason rather than a bare handshake failure), and an optional plain
/// /metrics listener.
/// <code>
///   TLS accept ─► concurrency gate (RESOURCE_EXHAUSTED past the limit) ─► gRPC (message size limit) ─► CertificateService
/// </code>
/// </summary>
internal sealed class CaServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly IDisposable? _placements;
    private readonly CaSignerReload? _reload;
    private readonly TrustBundlePublication? _publication;

    private CaServer(WebApplication app, IDisposable? placements, CaService service, IPEndPoint endpoint, IPEndPoint? metricsEndpoint,
        CaSignerReload? reload, TrustBundlePublication? publication)
    {
        _app = app;
        _placements = placements;
        _reload = reload;
        _publication = publication;
        Service = service;
        Endpoint = endpoint;
        MetricsEndpoint = metricsEndpoint;
    }

    /// <summary>Where the gRPC service listens, with the port actually bound.</summary>
    public IPEndPoint Endpoint { get; }

    public IPEndPoint? MetricsEndpoint { get; }

    public CaService Service { get; }

    public CaMetrics Metrics => Service.Metrics;

    /// <summary>Reads the CA's files now (besides the periodic check); true when a new CA signs from now on. False without <see cref="CaServerOptions.Files"/>.</summary>
    public bool ReloadSigner() => _reload?.Check() ?? false;

    /// <summary>Standalone mode: callers authenticate with node certificates; pod placement comes from <paramref name="inventory"/>.</summary>
    public static async Task<CaServer> StartAsync(CertificateAuthority authority, InventoryStore inventory, CaServerOptions options, CancellationToken cancellationToken = default)
    {
        var placements = new PodPlacementTracker(inventory);
        try
        {
            var metrics = new CaMetrics();
            CaService? service = null;
            var callers = new NodeCertificateAuthenticator(options.TrustDomain, () => service?.Authority ?? authority);
            var server = await StartAsync(authority, callers, placements, options, placements, metrics, cancellationToken).ConfigureAwait(false);
            service = server.Service;
            return server;
        }
        catch
        {
            placements.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Kubernetes mode: callers send their projected service-account token, checked with a TokenReview through
    /// <paramref name="client"/>; pod placement comes from <paramref name="pods"/> (owned by the caller, listed before).
    /// </summary>
    public static Task<CaServer> StartAsync(CertificateAuthority authority, IKubernetes client, KubernetesPodIndex pods, KubernetesCallerOptions callers,
        CaServerOptions options, CancellationToken cancellationToken = default)
    {
        var metrics = new CaMetrics();
        return StartAsync(authority, new ServiceAccountTokenAuthenticator(client, pods, options.TrustDomain, callers, metrics), pods, options, null, metrics, cancellationToken);
    }

    private static async Task<CaServer> StartAsync(CertificateAuthority authority, ICaCallerAuthenticator callers, IPodPlacements placements, CaServerOptions options,
        IDisposable? owned, CaMetrics metrics, CancellationToken cancellationToken)
    {
        if (SpiffeId.ValidateTrustDomain(options.TrustDomain) is { } tdError)
        {
            throw new ArgumentException(tdError, nameof(options));
        }
        var authorizer = new CertificateRequestAuthorizer(options.TrustDomain, callers, placements, options.MaxCsrBytes);
        var service = new CaService(authority, options, authorizer, metrics);
        var serving = new ServingCertificate(service, options, callers.AsksForClientCertificate);
        var gate = new SemaphoreSlim(options.MaxConcurrentRequests, options.MaxConcurrentRequests);

        ListenOptions? grpcListen = null;
        ListenOptions? metricsListenOptions = null;
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxConcurrentConnections = options.MaxConnections;
            kestrel.Limits.MaxConcurrentUpgradedConnections = 0;
            kestrel.Limits.Http2.MaxStreamsPerConnection = Math.Min(100, options.MaxConcurrentRequests);
            // The message size is gRPC's check (RESOURCE_EXHAUSTED, counted below), made on the message's
            // 5-byte prefix. A Kestrel body limit as well would race it: whichever saw the bytes first would
            // answer, and Kestrel's answer is an UNKNOWN that nothing counts. Flow control bounds what a
            // stream can make the server buffer instead: one message's worth before gRPC has read the prefix.
            kestrel.Limits.MaxRequestBodySize = null;
            kestrel.Limits.Http2.InitialStreamWindowSize = Math.Max(65_535, options.MaxRequestBytes + 1024);
            kestrel.Listen(options.Listen, listen =>
            {
                grpcListen = listen;
                listen.Protocols = HttpProtocols.Http2;
                listen.UseHttps(new TlsHandshakeCallbackOptions
                {
                    OnConnection = _ => ValueTask.FromResult(serving.AuthenticationOptions()),
                });
            });
            if (options.MetricsListen is { } metricsListen)
            {
                kestrel.Listen(metricsListen, listen =>
                {
                    metricsListenOptions = listen;
                    listen.Protocols = HttpProtocols.Http1;
                });
            }
        });
        builder.Services.AddRouting();
        builder.Services.AddGrpc(grpc =>
        {
            grpc.MaxReceiveMessageSize = options.MaxRequestBytes;
            grpc.EnableDetailedErrors = false;
        });
        builder.Services.AddSingleton(service);

        var app = builder.Build();
        var grpcPort = -1;
        app.Use(async (context, next) =>
        {
            if (context.Connection.LocalPort != Volatile.Read(ref grpcPort))
            {
                await ServeMetricsAsync(context, metrics).ConfigureAwait(false);
                return;
            }
            if (!gate.Wait(0))
            {
                service.Refuse(RefusalReason.TooManyRequests, $"more than {options.MaxConcurrentRequests} requests at once (peer {context.Connection.RemoteIpAddress})");
                WriteGrpcStatus(context, Grpc.Core.StatusCode.ResourceExhausted, "too many concurrent requests");
                return;
            }
            metrics.RequestStarted();
            try
            {
                await next(context).ConfigureAwait(false);
            }
            finally
            {
                metrics.RequestEnded();
                gate.Release();
            }
            // Only gRPC's own message size check ends a call with RESOURCE_EXHAUSTED after the gate.
            if (GrpcStatusOf(context) == ((int)Grpc.Core.StatusCode.ResourceExhausted).ToString(System.Globalization.CultureInfo.InvariantCulture))
            {
                service.Refuse(RefusalReason.RequestTooLarge, $"request message over {options.MaxRequestBytes} bytes (peer {context.Connection.RemoteIpAddress})");
            }
        });
        app.MapGrpcService<CertificateService>();

        try
        {
            await app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        // Kestrel writes the port it bound (port 0: the one the kernel chose) back into each listener's options.
        var endpoint = grpcListen!.IPEndPoint!;
        var metricsEndpoint = metricsListenOptions?.IPEndPoint;
        Volatile.Write(ref grpcPort, endpoint.Port);
        Log.Info("ca", $"serving {nameof(Protocol.IstioCertificateService)} on https://{endpoint} for trust domain {options.TrustDomain}"
            + (metricsEndpoint is null ? "" : $", metrics on http://{metricsEndpoint}/metrics") + $"; {callers.Description}; signing root {service.Root.Thumbprint}, "
            + $"trust bundle of {authority.TrustBundle.Count} root(s)" + (options.Publisher is { } publisher ? $" published to {publisher.Description}" : ""));
        var reload = options.Files is { } files ? new CaSignerReload(files, service, options.ReloadInterval) : null;
        var publication = options.Publisher is { } target ? new TrustBundlePublication(target, service) : null;
        if (publication is not null)
        {
            // Agents mount what is published: have it there (or the failure logged) before the CA says it is ready.
            await Task.WhenAny(publication.FirstAttempt, Task.Delay(TimeSpan.FromSeconds(15), cancellationToken)).ConfigureAwait(false);
        }

        return new CaServer(app, owned, service, endpoint, metricsEndpoint, reload, publication);
    }

    public async ValueTask DisposeAsync()
    {
        _reload?.Dispose();
        _publication?.Dispose();
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
        _placements?.Dispose();
    }

    private static string? GrpcStatusOf(HttpContext context)
    {
        if (context.Response.Headers.TryGetValue("grpc-status", out var inHeaders))
        {
            return inHeaders.ToString();
        }
        var trailers = context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpResponseTrailersFeature>()?.Trailers;
        return trailers is not null && trailers.TryGetValue("grpc-status", out var inTrailers) ? inTrailers.ToString() : null;
    }

    /// <summary>A gRPC "trailers-only" answer: HTTP 200, no message, the status in the headers.</summary>
    private static void WriteGrpcStatus(HttpContext context, Grpc.Core.StatusCode status, string message)
    {
        context.Response.StatusCode = StatusCodes.Status200OK;
        context.Response.ContentType = "application/grpc";
        context.Response.Headers["grpc-status"] = ((int)status).ToString(System.Globalization.CultureInfo.InvariantCulture);
        context.Response.Headers["grpc-message"] = message;
    }

    private static async Task ServeMetricsAsync(HttpContext context, CaMetrics metrics)
    {
        if (context.Request.Path != "/metrics" || !HttpMethods.IsGet(context.Request.Method))
        {
            context.Response.StatusCode = StatusCodes.Status404NotFound;
            return;
        }
        context.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await context.Response.WriteAsync(await metrics.ExportAsync().ConfigureAwait(false)).ConfigureAwait(false);
    }

    /// <summary>The CA's TLS certificate, issued from the CA at start, again at half life, and when the signer changes.</summary>
    private sealed class ServingCertificate(CaService service, CaServerOptions options, bool asksForClientCertificate)
    {
        private readonly object _gate = new();
        private SslStreamCertificateContext? _context;
        private CaSigner? _issuedBy;
        private DateTimeOffset _renewAt;

        public SslServerAuthenticationOptions AuthenticationOptions() => new()
        {
            ServerCertificateContext = Current(),
            ApplicationProtocols = [SslApplicationProtocol.Http2],
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            ClientCertificateRequired = asksForClientCertificate,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            // Judged per request by the caller authenticator, so that a refusal is a gRPC status with a logged reason.
            RemoteCertificateValidationCallback = (_, _, _, _) => true,
        };

        private SslStreamCertificateContext Current()
        {
            lock (_gate)
            {
                var now = DateTimeOffset.UtcNow;
                var signer = service.Signer;
                if (_context is null || now >= _renewAt || !ReferenceEquals(signer, _issuedBy))
                {
                    var authority = signer.Authority;
                    var addresses = options.Listen.Address.Equals(IPAddress.Any) || options.Listen.Address.Equals(IPAddress.IPv6Any)
                        ? [IPAddress.Loopback] : new[] { options.Listen.Address };
                    var certificate = CaCertificates.IssueServingCertificate(authority, options.ServerNames, addresses, options.ServingCertificateLifetime);
                    _context = SslStreamCertificateContext.Create(certificate, authority.Intermediates, offline: true);
                    _renewAt = now + (options.ServingCertificateLifetime / 2);
                    _issuedBy = signer;
                }
                return _context;
            }
        }
    }
}
