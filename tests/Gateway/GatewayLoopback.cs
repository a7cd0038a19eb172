using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Weft.Gateway;

namespace Weft.Tests.Gateway;

/// <summary>What an echo backend saw, as it answered it.</summary>
internal sealed record Echo(string Backend, string Path, string Host, string Method, Dictionary<string, string> Headers);

/// <summary>
/// A real HTTP server on 127.0.0.1 that answers every request with what it received, as JSON. As the upstream
/// conformance suite's echo server, <c>?delay=DURATION</c> (<c>1s</c>, <c>200ms</c>) waits that long before answering.
/// </summary>
internal sealed partial class EchoBackend : IAsyncDisposable
{
    private readonly WebApplication _app;
    private int _requests;
    private int _delaysAborted;

    private EchoBackend(WebApplication app, string name)
    {
        _app = app;
        Name = name;
    }

    public string Name { get; }

    public int Port { get; private set; }

    public int Requests => Volatile.Read(ref _requests);

    /// <summary>Delayed requests whose client (the gateway) went away before the answer: their connection or stream was closed.</summary>
    public int DelaysAborted => Volatile.Read(ref _delaysAborted);

    public List<string> Paths { get; } = [];

    public static async Task<EchoBackend> StartAsync(string name)
    {
        ListenOptions? listen = null;
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, l => listen = l));
        var app = builder.Build();
        var backend = new EchoBackend(app, name);
        app.Run(async context =>
        {
            Interlocked.Increment(ref backend._requests);
            var path = context.Request.Path.Value + context.Request.QueryString.Value;
            lock (backend.Paths)
            {
                backend.Paths.Add(path);
            }

            if (Delay(context.Request.Query["delay"].ToString()) is { } delay)
            {
                try
                {
                    await Task.Delay(delay, context.RequestAborted);
                }
                catch (OperationCanceledException)
                {
                    Interlocked.Increment(ref backend._delaysAborted);
                    return;
                }
            }

            var echo = new Echo(name, path, context.Request.Host.Value ?? "", context.Request.Method,
                context.Request.Headers.ToDictionary(h => h.Key.ToLowerInvariant(), h => h.Value.ToString()));
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(JsonSerializer.Serialize(echo));
        });
        await app.StartAsync();
        backend.Port = listen!.IPEndPoint!.Port;
        return backend;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    private static TimeSpan? Delay(string text) => DelayPattern().Match(text) is { Success: true } m
        ? TimeSpan.FromMilliseconds(int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) * (m.Groups[2].Value == "s" ? 1000 : 1))
        : null;

    [System.Text.RegularExpressions.GeneratedRegex("^([0-9]{1,6})(ms|s)$")]
    private static partial System.Text.RegularExpressions.Regex DelayPattern();
}

/// <summary>
/// The gateway as <c>weft gateway --inventory FILE</c> runs it (file source, route compiler, Kestrel + YARP) on
/// 127.0.0.1 with ports the kernel picks, plus real echo backends and a client.
/// </summary>
internal sealed class GatewayLoopback : IAsyncDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("weft-gateway-").FullName;
    private readonly List<EchoBackend> _backends = [];
    private GatewayConfigSource? _config;
    private GatewayServer? _server;

    public GatewayMetrics Metrics { get; } = new("gateway-ns");

    public string InventoryPath => Path.Combine(_dir, "gateway.yaml");

    public GatewayServer Server => _server!;

    public GatewayConfigSource Config => _config!;

    public HttpClient Client { get; } = new(new SocketsHttpHandler { UseProxy = false, AllowAutoRedirect = false, PooledConnectionLifetime = TimeSpan.Zero });

    /// <summary>A backend started here, by name (the conformance backends included).</summary>
    public EchoBackend Backend(string name) => _backends.Single(b => b.Name == name);

    public async Task<EchoBackend> BackendAsync(string name)
    {
        var backend = await EchoBackend.StartAsync(name);
        _backends.Add(backend);
        return backend;
    }

    /// <summary>Backends named as the upstream conformance suite's, each behind a Service of that name.</summary>
    public async Task<string> ConformanceBackendsAsync()
    {
        var yaml = "";
        foreach (var (ns, name) in new[]
        {
            ("gateway-conformance-infra", "infra-backend-v1"), ("gateway-conformance-infra", "infra-backend-v2"), ("gateway-conformance-infra", "infra-backend-v3"),
            ("gateway-conformance-web-backend", "web-backend"), ("gateway-conformance-app-backend", "app-backend-v1"),
        })
        {
            yaml += GatewayYaml.Service(ns, name, (await BackendAsync(name)).Port);
        }

        return yaml
            + GatewayYaml.Namespace("gateway-conformance-infra")
            + GatewayYaml.Namespace("gateway-conformance-web-backend", "{gateway-conformance: backend}")
            + GatewayYaml.Namespace("gateway-conformance-app-backend", "{gateway-conformance: backend}");
    }

    /// <param name="mesh">The gateway's mesh membership, or null (every backend in plaintext).</param>
    public async Task StartAsync(string yaml, GatewayOptions? options = null, GatewayMesh? mesh = null)
    {
        await File.WriteAllTextAsync(InventoryPath, yaml);
        options ??= new GatewayOptions();
        _config = GatewayConfigSource.Start(InventoryPath, Metrics, TimeSpan.FromMilliseconds(200), [.. options.GatewayHttp.Keys.Union(options.GatewayHttps.Keys)]);
        _server = await GatewayServer.StartAsync(options with
        {
            Http = new IPEndPoint(IPAddress.Loopback, 0),
            Https = new IPEndPoint(IPAddress.Loopback, 0),
            Admin = new IPEndPoint(IPAddress.Loopback, 0),
        }, () => _config.Current, Metrics, () => _config.LastError?.Message, mesh: mesh);
    }

    /// <summary>Rewrites the file and waits until the gateway serves a new route table (or the file's error is known).</summary>
    public async Task UpdateAsync(string yaml, bool expectValid = true)
    {
        var before = Config.Current.Version;
        await File.WriteAllTextAsync(InventoryPath, yaml);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (DateTime.UtcNow < deadline)
        {
            if (expectValid ? Config.Current.Version > before : Config.LastError is not null)
            {
                return;
            }

            await Task.Delay(50);
        }

        throw new TimeoutException($"the gateway did not pick up the new file (version {Config.Current.Version}, error {Config.LastError?.Message})");
    }

    public Uri Http(string pathAndQuery = "/") => new($"http://127.0.0.1:{Server.HttpEndpoint!.Port}{pathAndQuery}");

    /// <summary>The address of a Gateway given one of its own (<see cref="GatewayOptions.GatewayHttp"/>, "namespace/name").</summary>
    public Uri GatewayHttp(string gateway, string pathAndQuery = "/") => new($"http://127.0.0.1:{Server.GatewayHttpEndpoints[gateway].Port}{pathAndQuery}");

    /// <param name="gateway">Send it to this Gateway's own address ("namespace/name"), not to the shared HTTP listener.</param>
    public async Task<HttpResponseMessage> GetAsync(string host, string pathAndQuery, Action<HttpRequestMessage>? configure = null, HttpMethod? method = null, string? gateway = null)
    {
        using var request = new HttpRequestMessage(method ?? HttpMethod.Get, gateway is null ? Http(pathAndQuery) : GatewayHttp(gateway, pathAndQuery));
        request.Headers.Host = host;
        configure?.Invoke(request);
        return await Client.SendAsync(request);
    }

    /// <summary>The backend that answered and what it saw; fails unless the status is 200.</summary>
    public async Task<Echo> EchoAsync(string host, string pathAndQuery, Action<HttpRequestMessage>? configure = null, HttpMethod? method = null, string? gateway = null)
    {
        using var response = await GetAsync(host, pathAndQuery, configure, method, gateway);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{host}{pathAndQuery}: {(int)response.StatusCode} {body}");
        return JsonSerializer.Deserialize<Echo>(body)!;
    }

    public async Task<HttpStatusCode> StatusAsync(string host, string pathAndQuery, Action<HttpRequestMessage>? configure = null, string? gateway = null)
    {
        using var response = await GetAsync(host, pathAndQuery, configure, gateway: gateway);
        return response.StatusCode;
    }

    public async Task<string> AdminAsync(string path)
    {
        return await Client.GetStringAsync($"http://127.0.0.1:{Server.AdminEndpoint!.Port}{path}");
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }

        _config?.Dispose();
        foreach (var backend in _backends)
        {
            await backend.DisposeAsync();
        }

        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>A self-signed certificate for <paramref name="names"/> and a kubernetes.io/tls Secret that holds it.</summary>
    public static (X509Certificate2 Certificate, string SecretYaml) TlsSecret(string ns, string name, params string[] names)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={names[0]}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        foreach (var dns in names)
        {
            san.AddDnsName(dns);
        }

        request.CertificateExtensions.Add(san.Build());
        var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(1));
        var crt = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(certificate.ExportCertificatePem()));
        var pem = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(key.ExportPkcs8PrivateKeyPem()));
        return (certificate, $$"""
            ---
            apiVersion: v1
            kind: Secret
            metadata: {name: {{name}}, namespace: {{ns}}}
            type: kubernetes.io/tls
            data:
              tls.crt: {{crt}}
              tls.key: {{pem}}

            """);
    }

    /// <summary>A TLS handshake to the HTTPS listener with the given SNI (null: none): the certificate served and the ALPN protocol, or the failure.</summary>
    public async Task<(X509Certificate2? Certificate, string? Protocol, Exception? Error)> HandshakeAsync(string? serverName)
    {
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, Server.HttpsEndpoint!.Port);
        await using var tls = new SslStream(tcp.GetStream());
        try
        {
            await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
            {
                TargetHost = serverName ?? "",
                ApplicationProtocols = [SslApplicationProtocol.Http2, SslApplicationProtocol.Http11],
                RemoteCertificateValidationCallback = (_, _, _, _) => true,
            });
            return (new X509Certificate2(tls.RemoteCertificate!), tls.NegotiatedApplicationProtocol.ToString(), null);
        }
        catch (Exception ex) when (ex is System.Security.Authentication.AuthenticationException or IOException)
        {
            return (null, null, ex);
        }
    }
}
