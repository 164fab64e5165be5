--- gptbigcode: the Neovim client of gptbigcode-lsp. Starts the server for the configured
--- filetypes, enables LSP completion (0.11) and inline completion (0.12+) from it, and sets the
--- documented keymaps. Diagnostics and code actions come through Neovim's own LSP client.

local M = {}

M.name = "gptbigcode"
M.status_command = "gptbigcode.status"

--- Server options, sent as initializationOptions and as `settings.gptbigcode`; these are the
--- server's own defaults (vim.NIL is JSON null: the server picks the value).
M.default_options = {
  model = "default",
  device = "auto",
  dtype = "auto",
  quantize = "none",
  decodePath = "auto",
  maxNewTokens = 64,
  temperature = 0.0,
  topP = 1.0,
  contextTokens = vim.NIL,
  fimLayout = "auto",
  stop = {},
  debounceMs = 50,
  timeBudgetMs = 2000,
  minConfidence = vim.NIL, -- null: the threshold calibrated for the model
  candidates = 1, -- suggestions per request (1..8), best first: menu items, <M-]> / <M-[> inline
  -- Other open files (those imported, those defining names near the cursor) ahead of the
  -- current one in StarCoder's repository format, in at most `share` of the prompt's tokens.
  crossFile = {
    enabled = true,
    share = 0.25,
  },
  cacheBudgetMb = 1024,
  warm = true, -- prefill the cache while idle (after opening, editing, a suggestion)
  -- Where generation runs: "local" (in the server), or a shared serving engine ("vllm",
  -- "llamacpp", "openai") at `url`; the key comes from the environment variable apiKeyEnv names.
  engine = {
    kind = "local",
    url = "",
    model = "",
    apiKeyEnv = "",
    timeoutMs = 10000,
  },
  -- Diagnostics from the classification heads; setup{ diagnostics = {...} } is merged here.
  diagnostics = {
    enabled = true,
    model = "default",
    secrets = true,
    personalData = true,
    bugs = false,
    secretThreshold = vim.NIL, -- null: the thresholds calibrated with the model
    personalDataThreshold = vim.NIL,
    bugThreshold = vim.NIL,
    debounceMs = 400,
    maxChars = 1000000,
  },
}

--- LSP language identifiers where a filetype's name is not one (the server picks the quick
--- fix's syntax by the identifier).
M.language_ids = { sh = "shellscript", bash = "shellscript", zsh = "shellscript" }

M.defaults = {
  cmd = { "gptbigcode-lsp" },
  cmd_env = {}, -- over Neovim's environment; PYTHONSAFEPATH=1 is added (see lsp_config)
  filetypes = {
    "python", "lua", "javascript", "javascriptreact", "typescript", "typescriptreact", "go",
    "rust", "c", "cpp", "cs", "java", "kotlin", "scala", "ruby", "php", "sh", "bash", "zsh",
    "sql", "r", "julia", "swift", "html", "css", "yaml", "json", "toml",
  },
  root_markers = { ".git" },
  options = M.default_options,
  completion = { enable = true, autotrigger = false }, -- vim.lsp.completion (0.11+)
  -- 'completeopt' in the buffers the server attaches to, unless the user has set one: the menu
  -- even for our single item, the first item selected but not inserted until <C-y>.
  completeopt = "menu,menuone,noinsert,popup",
  inline_completion = { enable = true }, -- vim.lsp.inline_completion (0.12+)
  keymaps = {
    trigger = "<C-Space>", -- insert mode: the completion menu with the suggestion, now
    accept = "<Tab>", -- insert mode, 0.12+: accept the inline suggestion (else a plain <Tab>)
    next = "<M-]>", -- insert mode, 0.12+: next / previous inline suggestion
    prev = "<M-[>",
  },
}

--- The configuration setup() was given, merged over the defaults (nil before setup()).
M.config = nil
M.suggestions_enabled = true

--- initializationOptions for setup options `opts` (the defaults when nil): `opts.options` over
--- the defaults, and `opts.diagnostics` over their `diagnostics`.
function M.init_options(opts)
  opts = opts or {}
  local options = vim.tbl_deep_extend("force", vim.deepcopy(M.default_options), opts.options or {})
  options.diagnostics = vim.tbl_deep_extend("force", options.diagnostics, opts.diagnostics or {})
  return options
end

local function has_inline_completion()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

local function map(bufnr, lhs, rhs, desc, expr)
  if lhs then
    vim.keymap.set("i", lhs, rhs, { buffer = bufnr, desc = desc, expr = expr, silent = true })
  end
end

local function set_keymaps(bufnr, keymaps)
  if not keymaps then
    return
  end
  if vim.lsp.completion and M.config.completion.enable then
    map(bufnr, keymaps.trigger, vim.lsp.completion.get, "gptbigcode: completion menu now")
  end
  if has_inline_completion() then
    local inline = vim.lsp.inline_completion
    map(bufnr, keymaps.accept, function()
      if not inline.get() then
        return vim.keycode(keymaps.accept)
      end
    end, "gptbigcode: accept the inline suggestion", true)
    map(bufnr, keymaps.next, function() inline.select({ count = 1 }) end, "gptbigcode: next suggestion")
    map(bufnr, keymaps.prev, function() inline.select({ count = -1 }) end, "gptbigcode: previous suggestion")
  end
end

-- ---- accepting a completion item whole
--
-- vim.lsp.completion (0.11) inserts a plain-text item's textEdit.newText only up to its first
-- whitespace (and a complete-item word cannot hold a newline), so the menu shows and inserts
-- the suggestion's first line, and accepting the item (<C-y>) replaces what was inserted with
-- the whole edit.

local function is_ours(item)
  return item.detail == M.name and item.textEdit ~= nil and item.textEdit.newText ~= nil
end

--- vim.lsp.completion's `convert`: the complete-item word is the edit's first line.
function M.complete_item(item)
  if not is_ours(item) then
    return {}
  end
  return { word = vim.split(item.textEdit.newText, "\n", { plain = true })[1] }
end

--- The LSP item behind v:completed_item when it came from `client_id`, else nil.
local function completed_item(client_id)
  local completed = vim.v.completed_item
  local lsp = vim.tbl_get(completed or {}, "user_data", "nvim", "lsp")
  if not lsp or lsp.client_id ~= client_id or not is_ours(lsp.completion_item) then
    return nil
  end
  return lsp.completion_item, completed.word
end

--- CompleteDone: where the accepted item's word was inserted, puts the item's whole edit.
local function accept_whole(client, bufnr)
  local reason = vim.v.event and vim.v.event.reason
  if reason ~= nil and reason ~= "accept" then
    return
  end
  local item, word = completed_item(client.id)
  if not item then
    return
  end
  local start = item.textEdit.range and item.textEdit.range.start or item.textEdit.insert.start
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  if start.line ~= row - 1 then
    return
  end
  local line = vim.api.nvim_buf_get_lines(bufnr, row - 1, row, true)[1]
  local first = vim.str_byteindex(line, client.offset_encoding, start.character, false)
  if line:sub(first + 1, col) ~= word then
    return -- not what Neovim inserted for this item: leave the buffer alone
  end
  local lines = vim.split(item.textEdit.newText, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row - 1, first, row - 1, col, lines)
  local last_col = (#lines == 1 and first or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row + #lines - 1, last_col })
end

--- Sets `completeopt` in `bufnr` unless the user has set it there or globally. (The option's
--- was_set cannot tell: it is one flag, which our own buffer-local values set too.)
local function set_completeopt(bufnr, value)
  local default = vim.api.nvim_get_option_info2("completeopt", {}).default
  local here = vim.api.nvim_get_option_value("completeopt", { scope = "local", buf = bufnr })
  if value and vim.go.completeopt == default and here == "" then
    vim.bo[bufnr].completeopt = value
  end
end

--- Turns suggestions on or off in `bufnr` for `client`, with what this Neovim has.
local function enable_suggestions(client, bufnr, enabled)
  local config = M.config
  local state = { completion = false, inline_completion = false, enabled = enabled }
  if config.completion.enable and vim.lsp.completion then
    vim.lsp.completion.enable(enabled, client.id, bufnr, {
      autotrigger = config.completion.autotrigger,
      convert = M.complete_item,
    })
    state.completion = true
  end
  if config.inline_completion.enable and has_inline_completion() then
    vim.lsp.inline_completion.enable(enabled, { bufnr = bufnr })
    state.inline_completion = true
  end
  vim.b[bufnr].gptbigcode = state
end

local function on_attach(client, bufnr)
  enable_suggestions(client, bufnr, M.suggestions_enabled)
  set_keymaps(bufnr, M.config.keymaps)
  if M.config.completion.enable and vim.lsp.completion then
    set_completeopt(bufnr, M.config.completeopt)
    vim.api.nvim_create_autocmd("CompleteDone", {
      group = vim.api.nvim_create_augroup("gptbigcode.accept." .. bufnr, { clear = true }),
      buffer = bufnr,
      desc = "gptbigcode: accept the whole suggestion",
      callback = function()
        accept_whole(client, bufnr)
      end,
    })
  end
end

local function lsp_config(config)
  return {
    cmd = config.cmd,
    -- Python 3.11+ keeps the working directory (the project) off the import path, so that a
    -- project's model.py or lsp_server.py cannot replace the server's modules.
    cmd_env = vim.tbl_extend("force", { PYTHONSAFEPATH = "1" }, config.cmd_env or {}),
    filetypes = config.filetypes,
    root_markers = config.root_markers,
    init_options = config.options,
    settings = { gptbigcode = config.options },
    get_language_id = function(_, filetype)
      return M.language_ids[filetype] or filetype
    end,
    on_attach = on_attach,
  }
end

local function uses_lsp_enable()
  return vim.lsp.config ~= nil and vim.lsp.enable ~= nil
end

--- Starts the client for `bufnr`, or attaches the running one (same root).
local function start_in(bufnr, config)
  local base = uses_lsp_enable() and vim.lsp.config[M.name] or lsp_config(config)
  local root_dir = vim.fs.root(bufnr, config.root_markers)
  vim.lsp.start(vim.tbl_extend("force", base, { name = M.name, root_dir = root_dir }), { bufnr = bufnr })
end

--- Neovim 0.10: start the client from a FileType autocommand (0.11 has vim.lsp.enable).
local function start_on_filetype(config)
  vim.api.nvim_create_autocmd("FileType", {
    group = vim.api.nvim_create_augroup("gptbigcode.start", { clear = true }),
    pattern = config.filetypes,
    callback = function(args)
      start_in(args.buf, config)
    end,
  })
end

--- Configures and enables the server. `opts` is merged over M.defaults; `opts.options` over
--- the server options, `opts.diagnostics` over the server's diagnostics options.
function M.setup(opts)
  local config = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  config.options = M.init_options(opts)
  M.config = config
  if uses_lsp_enable() then
    vim.lsp.config(M.name, lsp_config(config))
    vim.lsp.enable(M.name)
  else
    start_on_filetype(config)
  end
  M.create_commands()
end

-- ---- status, restart, toggle

local function clients(bufnr)
  return vim.lsp.get_clients({ name = M.name, bufnr = bufnr })
end

--- Calls a vim.lsp.Client method: methods take the client as `self` from 0.11 on.
local function call(client, method, ...)
  if vim.fn.has("nvim-0.11") == 1 then
    return client[method](client, ...)
  end
  return client[method](...)
end

--- The server's status report (model, device, dtype, state, cache, latencies), or nil and
--- why not. `opts`: { bufnr = a buffer the client is attached to, timeout_ms = 2000 }.
function M.status(opts)
  opts = opts or {}
  local client = clients(opts.bufnr)[1]
  if not client then
    return nil, "no gptbigcode client is running"
  end
  local bufnr = opts.bufnr or next(client.attached_buffers) or 0
  local params = { command = M.status_command, arguments = {} }
  local response, err = call(client, "request_sync", "workspace/executeCommand", params, opts.timeout_ms or 2000, bufnr)
  if not response then
    return nil, "the status command failed: " .. tostring(err)
  end
  if response.err then
    return nil, "the status command failed: " .. tostring(response.err.message)
  end
  return response.result
end

--- One line saying what the server is doing.
function M.describe(status)
  if status.state == "ready" then
    return string.format("%s ready on %s (%s)", status.model, status.device, status.dtype)
  elseif status.state == "failed" then
    return "failed: " .. tostring(status.error)
  end
  return string.format("%s: %s", status.model, status.state)
end

function M.show_status()
  local status, err = M.status({ bufnr = vim.api.nvim_get_current_buf() })
  if not status then
    status, err = M.status()
  end
  if not status then
    vim.notify("gptbigcode: " .. err, vim.log.levels.WARN)
    return
  end
  local off = M.suggestions_enabled and "" or "; suggestions are off"
  vim.notify("gptbigcode: " .. M.describe(status) .. off, vim.log.levels.INFO)
end

--- Turns suggestions off and on in every buffer the server is attached to.
function M.toggle()
  M.suggestions_enabled = not M.suggestions_enabled
  for _, client in ipairs(clients()) do
    for bufnr in pairs(client.attached_buffers) do
      enable_suggestions(client, bufnr, M.suggestions_enabled)
    end
  end
  vim.notify("gptbigcode: suggestions " .. (M.suggestions_enabled and "on" or "off"))
end

--- Stops the server and starts it again for the buffers it served.
function M.restart()
  local running = clients()
  local buffers = {}
  for _, client in ipairs(running) do
    vim.list_extend(buffers, vim.tbl_keys(client.attached_buffers))
    call(client, "stop")
  end
  vim.wait(5000, function()
    return vim.iter(running):all(function(client) return call(client, "is_stopped") end)
  end, 50)
  for _, bufnr in ipairs(buffers) do
    if vim.api.nvim_buf_is_loaded(bufnr) then
      start_in(bufnr, M.config)
    end
  end
end

function M.create_commands()
  local command = vim.api.nvim_create_user_command
  command("GptBigCodeStatus", M.show_status, { desc = "gptbigcode: show the server's status" })
  command("GptBigCodeRestart", M.restart, { desc = "gptbigcode: restart the server" })
  command("GptBigCodeToggle", M.toggle, { desc = "gptbigcode: suggestions off / on" })
end

return M
