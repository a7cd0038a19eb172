using System.Net;
using System.Net.WebSockets;
using System.Text;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Weft.Tests.Gateway;

/// <summary>
/// A real backend on 127.0.0.1 for long-lived traffic: WebSocket echo (/ws), a response streamed in parts the
/// test releases (/stream), a request body read as it arrives (/upload), requests held until released (/hold),
/// a fixed status (/status/N), the protocol it was asked in (/protocol), and on a second, HTTP/2-only port, a gRPC service (unary and server-streaming).
/// </summary>
internal sealed class TrafficBackend : IAsyncDisposable
{
    public const string GrpcService = "weft.test.Echo";

    public static readonly Marshaller<string> Text = Marshallers.Create(s => Encoding.UTF8.GetBytes(s), b => Encoding.UTF8.GetString(b));
    public static readonly Method<string, string> Say = new(MethodType.Unary, GrpcService, nameof(EchoService.Say), Text, Text);
    public static readonly Method<string, string> Count = new(MethodType.ServerStreaming, GrpcService, nameof(EchoService.Count), Text, Text);

    private readonly WebApplication _app;
    private int _held;
    private TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _statusAnswers;
    private long _largeBytesWritten;
    private int _largeAborted;

    private TrafficBackend(WebApplication app, string name)
    {
        _app = app;
        Name = name;
    }

    public string Name { get; }

    /// <summary>HTTP/1.1: WebSockets, streaming, held requests.</summary>
    public int Port { get; private set; }

    /// <summary>HTTP/2 with prior knowledge (h2c): gRPC.</summary>
    public int GrpcPort { get; private set; }

    /// <summary>Requests waiting in /hold now.</summary>
    public int Held => Volatile.Read(ref _held);

    public int StatusAnswers => Volatile.Read(ref _statusAnswers);

    /// <summary>Bytes of /large responses Kestrel took from the backend (once the gateway closed the connection, it takes and drops them).</summary>
    public long LargeBytesWritten => Interlocked.Read(ref _largeBytesWritten);

    /// <summary>/large responses whose connection the gateway closed (it let go of the backend) rather than read to the end and kept.</summary>
    public int LargeAborted => Volatile.Read(ref _largeAborted);

    /// <summary>Parts of /upload bodies as they were read, each when it arrived.</summary>
    public System.Collections.Concurrent.ConcurrentQueue<string> Uploaded { get; } = new();

    /// <summary>The /stream handler waits for one release per part after the first.</summary>
    public SemaphoreSlim StreamParts { get; } = new(0);

    /// <summary>Lets every /hold request (now and later) answer.</summary>
    public void Release() => _release.TrySetResult();

    public static async Task<TrafficBackend> StartAsync(string name)
    {
        ListenOptions? http = null, grpc = null;
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxConcurrentConnections = null;
            k.Limits.MaxConcurrentUpgradedConnections = null;
            k.Listen(IPAddress.Loopback, 0, l => (http = l).Protocols = HttpProtocols.Http1);
            k.Listen(IPAddress.Loopback, 0, l => (grpc = l).Protocols = HttpProtocols.Http2);
        });
        builder.Services.AddGrpc();
        var app = builder.Build();
        var backend = new TrafficBackend(app, name);
        app.UseWebSockets();
        app.MapGrpcService<EchoService>();
        app.Map("/ws", backend.EchoWebSocketAsync);
        app.Map("/hold", async context =>
        {
            Interlocked.Increment(ref backend._held);
            try
            {
                await backend._release.Task.WaitAsync(context.RequestAborted);
                await context.Response.WriteAsync($"{name} held");
            }
            finally
            {
                Interlocked.Decrement(ref backend._held);
            }
        });
        app.Map("/stream", async context =>
        {
            for (var part = 0; part < 3; part++)
            {
                if (part > 0)
                {
                    await backend.StreamParts.WaitAsync(context.RequestAborted);
                }

                await context.Response.WriteAsync($"part {part}\n");
                await context.Response.Body.FlushAsync();
            }
        });
        app.Map("/large", async context =>
        {
            // 256 MiB in 64 KiB writes: far more than socket buffers and the gateway's buffers hold.
            var chunk = new byte[64 * 1024];
            context.Response.ContentLength = 4096L * chunk.Length;
            try
            {
                for (var i = 0; i < 4096; i++)
                {
                    context.RequestAborted.ThrowIfCancellationRequested();
                    await context.Response.Body.WriteAsync(chunk, context.RequestAborted);
                    Interlocked.Add(ref backend._largeBytesWritten, chunk.Length);
                }

                // Once the peer closed the connection Kestrel takes every write at once and drops it, and it cancels
                // RequestAborted from the thread pool, late on a loaded machine: the rest of the loop can run through
                // before the token says so. A peer that read the whole body keeps the connection and never aborts.
                await Task.Delay(TimeSpan.FromSeconds(10), context.RequestAborted);
            }
            catch (Exception e) when (e is OperationCanceledException or IOException)
            {
                Interlocked.Increment(ref backend._largeAborted);
            }
        });
        app.Map("/upload", async context =>
        {
            var buffer = new byte[4096];
            int read;
            var total = 0;
            while ((read = await context.Request.Body.ReadAsync(buffer)) > 0)
            {
                backend.Uploaded.Enqueue(Encoding.UTF8.GetString(buffer, 0, read));
                total += read;
            }

            await context.Response.WriteAsync($"{name} read {total}");
        });
        app.Map("/status/{code:int}", (HttpContext context, int code) =>
        {
            Interlocked.Increment(ref backend._statusAnswers);
            context.Response.StatusCode = code;
            return context.Response.WriteAsync(name);
        });
        app.Map("/protocol", context => context.Response.WriteAsync($"{name} {context.Request.Protocol}"));
        app.MapFallback(context => context.Response.WriteAsync(name));
        await app.StartAsync();
        backend.Port = http!.IPEndPoint!.Port;
        backend.GrpcPort = grpc!.IPEndPoint!.Port;
        return backend;
    }

    public async ValueTask DisposeAsync()
    {
        Release();
        await _app.StopAsync();
        await _app.DisposeAsync();
        StreamParts.Dispose();
    }

    private async Task EchoWebSocketAsync(HttpContext context)
    {
        if (!context.WebSockets.IsWebSocketRequest)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            return;
        }

        using var socket = await context.WebSockets.AcceptWebSocketAsync();
        var buffer = new byte[16 * 1024];
        while (true)
        {
            var received = await socket.ReceiveAsync(buffer, context.RequestAborted);
            if (received.MessageType == WebSocketMessageType.Close)
            {
                await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "bye", CancellationToken.None);
                return;
            }

            // Binary frames come back as they are; text comes back with the backend's name before it.
            var reply = received.MessageType == WebSocketMessageType.Binary
                ? buffer.AsMemory(0, received.Count)
                : Encoding.UTF8.GetBytes($"{Name}: {Encoding.UTF8.GetString(buffer, 0, received.Count)}");
            await socket.SendAsync(reply, received.MessageType, endOfMessage: true, context.RequestAborted);
        }
    }

    /// <summary>gRPC without generated code, shaped as generated code is: a base that binds virtual methods by name (<see cref="Say"/>, <see cref="Count"/>).</summary>
    [BindServiceMethod(typeof(EchoServiceBase), nameof(BindService))]
    internal abstract class EchoServiceBase
    {
        public static void BindService(ServiceBinderBase binder, EchoServiceBase? service)
        {
            binder.AddMethod(TrafficBackend.Say, service is null ? null : new UnaryServerMethod<string, string>(service.Say));
            binder.AddMethod(TrafficBackend.Count, service is null ? null : new ServerStreamingServerMethod<string, string>(service.Count));
        }

        public abstract Task<string> Say(string request, ServerCallContext context);

        public abstract Task Count(string request, IServerStreamWriter<string> responses, ServerCallContext context);
    }

    internal sealed class EchoService : EchoServiceBase
    {
        public override Task<string> Say(string request, ServerCallContext context)
        {
            context.ResponseTrailers.Add("x-echo-trailer", "said");
            return Task.FromResult($"hello {request} via {context.RequestHeaders.GetValue("x-forwarded-proto")}");
        }

        /// <summary>"3" answers "1", "2", "3", one message at a time, then a trailer.</summary>
        public override async Task Count(string request, IServerStreamWriter<string> responses, ServerCallContext context)
        {
            for (var i = 1; i <= int.Parse(request, System.Globalization.CultureInfo.InvariantCulture); i++)
            {
                await responses.WriteAsync(i.ToString(System.Globalization.CultureInfo.InvariantCulture));
                await Task.Delay(20);
            }

            context.ResponseTrailers.Add("x-echo-trailer", "counted");
        }
    }
}
