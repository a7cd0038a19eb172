using System.Net;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using k8s;
using Weft.Gateway;
using Weft.Inventory;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.Gateway;

/// <summary>
/// The gateway as <c>weft gateway</c> runs it in Kubernetes mode (GatewayKubernetesSource over the real
/// KubernetesClient, route compiler, status writer, Kestrel + YARP) against the wire-level fake API server,
/// with real echo backends on loopback and a client.
/// </summary>
internal sealed class GatewayOnFakeCluster : IAsyncDisposable
{
    private static readonly MethodInfo ApplyMethod = typeof(FakeApiServer).GetMethods().Single(m => m.Name == nameof(FakeApiServer.Apply) && m.IsGenericMethodDefinition);
    private readonly List<EchoBackend> _backends = [];
    private GatewayKubernetesSource? _source;
    private GatewayServer? _server;

    public FakeApiServer Api { get; } = FakeApiServer.Start();

    public GatewayMetrics Metrics { get; } = new("gateway-ns");

    public GatewayKubernetesSource Source => _source!;

    public GatewayServer Server => _server!;

    public HttpClient Client { get; } = new(new SocketsHttpHandler { UseProxy = false, AllowAutoRedirect = false, PooledConnectionLifetime = TimeSpan.Zero });

    /// <summary>The conformance backends (as <see cref="GatewayLoopback.ConformanceBackendsAsync"/>) as objects in the fake cluster.</summary>
    public async Task ConformanceBackendsAsync()
    {
        var yaml = GatewayYaml.Namespace("gateway-conformance-infra")
            + GatewayYaml.Namespace("gateway-conformance-web-backend", "{gateway-conformance: backend}")
            + GatewayYaml.Namespace("gateway-conformance-app-backend", "{gateway-conformance: backend}");
        foreach (var (ns, name) in new[]
        {
            ("gateway-conformance-infra", "infra-backend-v1"), ("gateway-conformance-infra", "infra-backend-v2"), ("gateway-conformance-infra", "infra-backend-v3"),
            ("gateway-conformance-web-backend", "web-backend"), ("gateway-conformance-app-backend", "app-backend-v1"),
        })
        {
            var backend = await EchoBackend.StartAsync(name);
            _backends.Add(backend);
            yaml += GatewayYaml.Service(ns, name, backend.Port);
        }

        Apply(yaml);
    }

    /// <summary>Creates or replaces every object of the YAML in the fake cluster (watchers see ADDED or MODIFIED).</summary>
    public void Apply(string yaml)
    {
        foreach (var obj in InventoryYaml.Load(yaml, "test.yaml", GatewayApiKinds.All))
        {
            ApplyMethod.MakeGenericMethod(obj.GetType()).Invoke(Api, [obj]);
        }
    }

    /// <param name="server">Options of the server besides its loopback --http, --https and --admin (e.g. Gateways' own addresses).</param>
    public async Task StartAsync(GatewayStatusOptions? status = null, GatewayOptions? server = null)
    {
        _source = GatewayKubernetesSource.Start(Api.Client(), Metrics, new GatewayKubernetesOptions
        {
            Watch = new KubernetesInventoryOptions { NodeName = "gateway", InitialBackoff = TimeSpan.FromMilliseconds(50), MaxBackoff = TimeSpan.FromMilliseconds(500) },
            Debounce = TimeSpan.FromMilliseconds(20),
            Status = status ?? new GatewayStatusOptions { Addresses = ["192.0.2.10"] },
            OwnAddresses = server is null ? [] : [.. server.GatewayHttp.Keys.Union(server.GatewayHttps.Keys)],
        });
        await _source.WaitForReadyAsync().WaitAsync(TimeSpan.FromSeconds(30));
        _server = await GatewayServer.StartAsync((server ?? new GatewayOptions()) with
        {
            Http = new IPEndPoint(IPAddress.Loopback, 0),
            Https = new IPEndPoint(IPAddress.Loopback, 0),
            Admin = new IPEndPoint(IPAddress.Loopback, 0),
        }, () => _source.Current, Metrics, () => _source.LastError);
    }

    public async Task<HttpResponseMessage> GetAsync(string host, string path)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, $"http://127.0.0.1:{Server.HttpEndpoint!.Port}{path}");
        request.Headers.Host = host;
        return await Client.SendAsync(request);
    }

    /// <summary>"404", or the name of the echo backend that answered, or the status code.</summary>
    public async Task<string> AnswerAsync(string host, string path)
    {
        using var response = await GetAsync(host, path);
        if (response.StatusCode != HttpStatusCode.OK)
        {
            return ((int)response.StatusCode).ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        return JsonSerializer.Deserialize<Echo>(await response.Content.ReadAsStringAsync())!.Backend;
    }

    /// <summary>Polls until the client gets <paramref name="expected"/> (backend name or status code); fails with the last answer.</summary>
    public async Task AnswersAsync(string host, string path, string expected, double seconds = 20)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        var last = "";
        while (DateTime.UtcNow < deadline)
        {
            last = await AnswerAsync(host, path);
            if (last == expected)
            {
                return;
            }

            await Task.Delay(50);
        }

        Assert.Fail($"{host}{path} answered {last}, not {expected}, within {seconds} s; routes:\n{GatewayServer.Describe(Source.Current, Source.LastError)}");
    }

    /// <summary>Polls the object held by the fake API server until <paramref name="condition"/> holds on it; returns it.</summary>
    public async Task<JsonObject> WaitForObjectAsync<T>(string? ns, string name, Func<JsonObject, bool> condition, double seconds = 20)
        where T : IKubernetesObject<k8s.Models.V1ObjectMeta>
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        JsonObject? last = null;
        while (DateTime.UtcNow < deadline)
        {
            last = Api.Get<T>(ns, name);
            if (last is not null && condition(last))
            {
                return last;
            }

            await Task.Delay(50);
        }

        Assert.Fail($"{typeof(T).Name} {ns}/{name} never met the condition; it is now: {last?.ToJsonString()}");
        return null!;
    }

    /// <summary>The condition of that type in a conditions array, as "Status/Reason/observedGeneration", or null.</summary>
    public static string? Condition(JsonNode? conditions, string type) =>
        (conditions as JsonArray)?.FirstOrDefault(c => c?["type"]?.GetValue<string>() == type) is { } c
            ? $"{c["status"]}/{c["reason"]}/{c["observedGeneration"]}"
            : null;

    /// <summary>Our entry of an HTTPRoute's status.parents for the Gateway named, or null.</summary>
    public static JsonNode? RouteParent(JsonObject route, string gateway, string? sectionName = null) =>
        (route["status"]?["parents"] as JsonArray)?.FirstOrDefault(p => p?["controllerName"]?.GetValue<string>() == GatewayApiKinds.ControllerName
            && p?["parentRef"]?["name"]?.GetValue<string>() == gateway && p?["parentRef"]?["sectionName"]?.GetValue<string>() == sectionName);

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }

        _source?.Dispose();
        await Api.DisposeAsync();
        foreach (var backend in _backends)
        {
            await backend.DisposeAsync();
        }
    }
}
